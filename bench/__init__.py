"""procflow benchmark suite. Run each benchmark as a module from the repo root: ``python -m bench.X``."""
