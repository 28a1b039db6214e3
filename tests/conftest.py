import contextlib
import gc

import jax
import jaxtyping
import pytest

# Exactness is tested in float64; float32 accuracy is measured separately, at depth.
jax.config.update("jax_enable_x64", True)


@contextlib.contextmanager
def _type_checks_off():
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture
def own_checks():
    """Switch off jaxtyping's runtime checks (on in the test run, off for users), so
    that the layers' own checks are the ones tested."""
    with _type_checks_off():
        yield


@pytest.fixture
def unchecked():
    """Switch off jaxtyping's runtime checks for tests that measure compiled
    programs or run the benchmarks: they trace the code paths that the property
    and exactness suites already check, at other sizes, and the checks cost a fifth
    of their (tracing-bound) time."""
    with _type_checks_off():
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's caches of compiled programs after each test module. A test
    worker compiles thousands of programs, and XLA's CPU code memory is given back
    only with them; once, late in a run, both workers crashed inside XLA's
    compiler (a segmentation fault), the failure this is meant to keep away."""
    yield
    jax.clear_caches()
    gc.collect()


# The slowest tests (each 20-65 s on two cores, `--durations`), started first: the
# workers take the collected tests in order and steal from each other's ends, so
# that a run then ends on short tests, not with one worker alone on a long one.
SLOWEST = (
    "test_grad_exact.py::test_sequential_models",
    "test_grad_exact.py::test_scanned_models",
    "test_memory.py::test_mixed_keeps_a_quarter_of_checkpointing",
    "test_flows.py::test_flow",
    "test_flowjax.py::test_image_flow",
    "test_report.py::test_report_in_a_scanned_training_loop_and_under_vmap",
)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not any(name in item.nodeid for name in SLOWEST))
