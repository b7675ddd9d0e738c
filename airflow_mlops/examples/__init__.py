"""Small, self-contained models for the example DAGs, tests and benchmarks (``examples`` extra)."""
