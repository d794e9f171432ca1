"""pylosses benchmarks: `python -m benchmarks` (the CLI) and pytest-benchmark suites (bench_*.py)."""
