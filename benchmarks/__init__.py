"""Benchmarks: every kernel against its eager PyTorch/NumPy version (`kernels/<op>_eager.py`). Run one as
`python -m benchmarks.<name>` (full sizes, writes benchmarks/results/) or through pytest-benchmark
(`pytest benchmarks/<file> --benchmark-only`)."""
