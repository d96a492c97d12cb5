"""Native vs container kernel benchmarks (see run.py)."""
