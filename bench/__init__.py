"""poc59's benchmarks: `python bench/run.py [--quick] [--only NAME] [--strict]` (see README.md)."""
