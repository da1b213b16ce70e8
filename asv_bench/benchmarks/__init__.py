"""asv benchmarks of gpukb; how to run them: the README's "Benchmarks" section."""
