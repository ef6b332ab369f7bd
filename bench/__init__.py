"""Benchmarks: the engine by stage, batching across sessions, and the reference-style baseline."""
