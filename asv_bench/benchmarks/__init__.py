"""asv benchmarks of gpukb (see asv_bench/README.md)."""
