import jax

# Exactness is tested in float64; float32 accuracy is measured separately, at depth.
jax.config.update("jax_enable_x64", True)
