"""Benchmarks: every kernel against its plain PyTorch/NumPy reference. Run one as
`python -m benchmarks.<name>` (full sizes, writes benchmarks/results/) or through pytest-benchmark
(`pytest benchmarks/<file> --benchmark-only`)."""
