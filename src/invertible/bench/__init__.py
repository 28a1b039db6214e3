"""Benchmarks: memory, time and float32 accuracy of the gradient methods.

Run `python -m invertible.bench --help`.
"""
