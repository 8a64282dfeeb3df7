"""One-off measurements behind particular serving choices (see README.md here); the benchmarks a
user runs are one level up, in ``loadtest``."""
