"""Built-in simulator of the providers' APIs, for the demo, tests and benchmarks."""
