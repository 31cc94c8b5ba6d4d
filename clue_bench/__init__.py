"""Benchmarks behind docs/PERFORMANCE.md (`clue bench train|preprocess|serve`)."""
