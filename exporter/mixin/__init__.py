"""Source of the shipped Prometheus rules and Grafana dashboards.

`config` holds every threshold, selector and URL; `queries` the PromQL shared by the rules and the
dashboards. `rules` writes the rule groups; `promtests` their promtool tests, from the scenarios of
`job_scenarios` and `target_scenarios`, the replicas' `handover_tests` and the `cluster_tests`,
all made of `promtest_inputs`. `overview_board` and `job_board` are the two dashboards, on
Grafana's model in `grafana`. The `slo_*` modules do the same for job objectives. `files` gathers
them into the files that `make generate` and `asyncjob-exporter mixin` write; `user` reads a
user's YAML into a config.
"""
