# Benchmarks (see README)
