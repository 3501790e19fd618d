"""Scenarios of the alerts about targets and the exporter (a target down or polled too long ago,
the exporter unscraped, the tracking cap reached, a source gone, states no one documented) and
about Oxlin's connections (not synchronised for too long, a consent about to lapse). Each puts
one target or connection past the alert's threshold and another short of it.
"""

from __future__ import annotations

from exporter import catalogue

from .config import Config, seconds
from .promtest_inputs import MINUTE, Scenario, constant, input_series, run_minutes


def target_down(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = run_minutes(cfg)
    other = {**labels, "target": "t2"}
    series = [
        input_series(catalogue.TARGET_UP.name, labels, constant(0, n)),
        input_series(catalogue.TARGET_UP.name, other, constant(1, n)),
    ]
    return Scenario("AsyncJobTargetDown", 0, 1, series)


def polling_stale(cfg: Config, labels: dict[str, str]) -> Scenario:
    interval = 60
    stale = cfg.polling_stale_intervals * interval
    n = run_minutes(cfg, stale)
    other = {**labels, "target": "t2"}
    series = [
        input_series(catalogue.LAST_SUCCESSFUL_POLL.name, labels, constant(0, n)),
        input_series(catalogue.TARGET_POLL_INTERVAL.name, labels, constant(interval, n)),
        input_series(catalogue.LAST_SUCCESSFUL_POLL.name, other, f"0+{MINUTE}x{n}"),
        input_series(catalogue.TARGET_POLL_INTERVAL.name, other, constant(interval, n)),
    ]
    return Scenario("AsyncJobPollingStale", stale + MINUTE, 1, series)


def exporter_down(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = run_minutes(cfg)
    base = {k: v for k, v in labels.items() if k != "target"}
    return Scenario("AsyncJobExporterDown", 0, 1, [input_series("up", base, constant(0, n))])


def tracking_cap_reached(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = run_minutes(cfg, seconds(cfg.tracking_cap_window))
    other = {**labels, "target": "t2"}
    series = [
        input_series(catalogue.JOBS_DROPPED.name, {**labels, "reason": "cap"}, f"0+1x{n}"),
        input_series(catalogue.JOBS_DROPPED.name, {**other, "reason": "cap"}, constant(0, n)),
    ]
    return Scenario("AsyncJobTrackingCapReached", MINUTE, 1, series)


def _connection_sync_stale(cfg: Config, labels: dict[str, str], name: str) -> Scenario:
    # c1 is stale for an operator, c3 for its end user (its last sync failed for them); c2
    # synchronised later, c4 is closed.
    stale = cfg.connection_sync_stale_seconds
    n = run_minutes(cfg, stale + 3600)
    series = []
    for connection, last, waiting, status in (
        ("c1", 0, 0, "FAILED"),
        ("c2", 1800, 0, "SUCCESS"),
        ("c3", 0, 1, "FAILED"),
        ("c4", 0, 0, "CLOSED"),
    ):
        conn = {**labels, "connection_id": connection}
        series.append(input_series(catalogue.CONNECTION_LAST_SUCCESS.name, conn, constant(last, n)))
        series.append(
            input_series(catalogue.CONNECTION_STATUS.name, {**conn, "status": status}, constant(1, n))
        )
        series.append(input_series(catalogue.CONNECTION_AWAITING_USER.name, conn, constant(waiting, n)))
    return Scenario(name, stale + MINUTE, 1, series)


def connection_sync_stale(cfg: Config, labels: dict[str, str]) -> Scenario:
    return _connection_sync_stale(cfg, labels, "AsyncJobConnectionSyncStale")


def user_connection_sync_stale(cfg: Config, labels: dict[str, str]) -> Scenario:
    return _connection_sync_stale(cfg, labels, "AsyncJobUserConnectionSyncStale")


def source_missing(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = run_minutes(cfg)
    source = {**labels, "source": "user ea3a81"}
    series = [input_series(catalogue.SOURCE_MISSING_SINCE.name, source, constant(0, n))]
    return Scenario("AsyncJobSourceMissing", 0, 1, series)


def state_undocumented(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = run_minutes(cfg)
    series = []
    for raw, jobs in (("ON_HOLD", 2), ("PAUSED", 0)):
        common = {**labels, "job_type": "connection", "raw_status": raw}
        series.append(input_series(catalogue.JOBS_UNDOCUMENTED.name, common, constant(jobs, n)))
    return Scenario("AsyncJobStateUndocumented", 0, 1, series)


def consent_expiring(cfg: Config, labels: dict[str, str]) -> Scenario:
    warning = cfg.consent_expiry_warning_days * 86400
    n = run_minutes(cfg, 7200)
    series = []
    for connection, expires in (("c1", warning + 1800), ("c2", warning + 10**6)):
        conn = {**labels, "connection_id": connection, "channel": "REDIRECT"}
        series.append(input_series(catalogue.CHANNEL_CONSENT_EXPIRY.name, conn, constant(expires, n)))
    return Scenario("AsyncJobConsentExpiring", 1800 + MINUTE, 1, series)
