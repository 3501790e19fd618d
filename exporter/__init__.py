"""asyncjob-exporter: Prometheus metrics for the asynchronous jobs of third-party APIs."""

__version__ = "0.1.0"
