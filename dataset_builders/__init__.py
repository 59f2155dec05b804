"""Data: the record schema, the benchmark suite, the seed pool and the HarmAug corpus builder."""
