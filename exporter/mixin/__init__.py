"""Source of the shipped Prometheus rules and Grafana dashboards.

`config` holds every threshold, selector and URL; `queries` the PromQL shared by the rules and the
dashboards; `rules`, `promtests` and `boards` turn them into the files (`files`) that `make generate`
and `asyncjob-exporter mixin` write; `user` reads a user's YAML into a config.
"""
