"""Benchmarks of the scrape, poll, memory, scale and detection paths; `make bench` runs them all
and writes docs/benchmarks.md. Every figure is a ratio against a baseline measured in the same run."""
