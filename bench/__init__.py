"""The performance benchmark: the service against a framework-free baseline (see bench/run.py)."""
