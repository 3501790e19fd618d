"""Source of the shipped Prometheus rules and Grafana dashboards.

`config` holds every threshold, selector and URL; `queries` the PromQL shared by the rules and the
dashboards; `rules` and `boards` turn them into the files that `dashboards/generate.py` writes.
"""
