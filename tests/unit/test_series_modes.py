"""per_job_series: which jobs have per-job series (all, exceptions, none, auto), the timer that
shows a job once it becomes stuck with no new answer, and the cap on step names."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from exporter.config import ConfigError, build_settings
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.render import Exposition
from exporter.tracker import Tracker


def setup(**target: Any) -> tuple[Tracker, Exposition]:
    s = build_settings(
        {
            "global": {"stuck_after": "10m", "max_duration": "1h", "retention": "1h", "poll_interval": "30s"},
            "targets": [{"name": "t", "provider": "basiq", "base_url": "https://x", **target}],
        },
        PROVIDERS,
    )
    tr = Tracker()
    ex = Exposition(tr, lambda: {})
    tr.set_target(s.resolved(s.targets[0]))
    return tr, ex


def with_series(ex: Exposition) -> set[str]:
    """Ids of the jobs that have per-job series in the body."""
    body = ex.render().decode()
    return {
        line.split('job_id="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if line.startswith("asyncjob_job_info{")
    }


def aggregates(ex: Exposition) -> list[str]:
    moving = ("process_", "python_gc_", "asyncjob_exporter_tasks ")
    return [
        line
        for line in ex.render().decode().splitlines()
        if "job_id=" not in line and not line.startswith(moving)
    ]


def a_fleet(tr: Tracker, now: float) -> None:
    """One job of each kind: the healthy ones need nobody, the others somebody."""
    recent = now - 60
    for job in (
        Job("running", Status.RUNNING, job_type="c", created=recent, updated=recent),
        Job("pending", Status.PENDING, job_type="c", created=recent, updated=recent),
        Job("done", Status.SUCCEEDED, job_type="c", created=recent, finished=now - 1),
        Job("failed", Status.FAILED, job_type="c", created=recent, reason="connector-error"),
        Job("mfa", Status.RUNNING, job_type="c", created=recent, updated=recent, awaiting_user=True),
        Job("records", Status.SUCCEEDED, job_type="c", created=recent, records_total=10, records_failed=3),
        Job("odd", Status.UNKNOWN, "paused", job_type="c", created=recent, updated=recent),
        Job("still", Status.RUNNING, job_type="c", created=now - 1200, updated=now - 1200),
        Job("long", Status.RUNNING, job_type="c", created=now - 7200, updated=now - 5),
    ):
        tr.track("t", job, "static", now=now)


NEED_A_PERSON = {"failed", "mfa", "records", "odd", "still", "long"}
EVERY_JOB = NEED_A_PERSON | {"running", "pending", "done"}


@pytest.mark.parametrize(
    ("mode", "shown"),
    [("all", EVERY_JOB), ("exceptions", NEED_A_PERSON), ("none", set())],
)
def test_each_mode_shows_its_jobs_and_the_same_aggregates(mode: str, shown: set[str]) -> None:
    now = time.time()
    tr, ex = setup(per_job_series=mode)
    a_fleet(tr, now)
    assert with_series(ex) == shown
    reference_tracker, reference = setup(per_job_series="all")
    a_fleet(reference_tracker, now)
    assert aggregates(ex) == aggregates(reference)


def test_a_job_that_moves_again_leaves_the_exceptions() -> None:
    now = time.time()
    tr, ex = setup(per_job_series="exceptions")
    tr.track("t", Job("1", Status.RUNNING, created=now - 1200, updated=now - 1200), "static", now=now)
    assert with_series(ex) == {"1"}  # stuck: no progress for 20 minutes
    tr.update(tr.targets["t"], Job("1", Status.RUNNING, created=now - 1200, updated=now), now)
    assert with_series(ex) == set()


@pytest.mark.anyio
async def test_a_quiet_job_gets_its_series_once_its_stuck_threshold_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No answer changes a job that stopped moving: the background refresh's timer shows it."""
    now = time.time()
    tr, ex = setup(per_job_series="exceptions")
    tr.track("t", Job("quiet", Status.RUNNING, created=now, updated=now), "static", now=now)
    assert with_series(ex) == set()
    ex.render(gz=True)  # the served part, without the job
    async with anyio.create_task_group() as tg:
        tg.start_soon(ex.jobs.refresh_in_background)
        await anyio.sleep(0.2)
        assert b'job_id="quiet"' not in ex.render(fresh=False)  # not stuck yet: still hidden
        later = now + 601  # past stuck_after (10m), and nothing was polled meanwhile
        monkeypatch.setattr(time, "time", lambda: later)
        with anyio.fail_after(5):
            while b'job_id="quiet"' not in ex.render(fresh=False):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert tr.targets["t"].jobs["quiet"].last_progress == now  # shown by the timer, not by a change


def test_a_timer_for_a_job_that_moved_meanwhile_waits_for_its_new_deadline() -> None:
    now = time.time()
    tr, ex = setup(per_job_series="exceptions")
    tr.track("t", Job("1", Status.RUNNING, created=now, updated=now), "static", now=now)
    tr.update(tr.targets["t"], Job("1", Status.RUNNING, created=now, updated=now + 300), now + 300)
    ex.render()
    ex.jobs.wake_due(now + 601)  # the first deadline: the job moved at +300, not stuck
    assert not ex.jobs.dirty
    # Stuck at +900; shown a poll interval (30 s) before, so Prometheus has it when that passes.
    assert ex.jobs.due_at == {("t", "1"): now + 870}
    ex.jobs.wake_due(now + 869)
    assert not ex.jobs.dirty
    ex.jobs.wake_due(now + 870)
    assert ex.jobs.dirty


def test_auto_switches_above_the_limit_and_back_under_80_percent(caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    tr, ex = setup(per_job_series="auto", per_job_series_limit=5)
    caplog.set_level(logging.INFO, logger="asyncjob.render")
    for i in range(5):
        tr.track("t", Job(f"h{i}", Status.RUNNING, created=now, updated=now), "static", now=now)
    assert len(with_series(ex)) == 5 and not caplog.records  # at the limit, not above it
    tr.track("t", Job("f", Status.FAILED, reason="connector-error"), "static", now=now)
    assert with_series(ex) == {"f"}
    assert [r.__dict__["per_job_series"] for r in caplog.records] == ["exceptions"]
    tr.drop("t", "h0", "deleted")
    tr.drop("t", "h1", "deleted")  # 4 jobs: 80 % of 5, still exceptions
    assert with_series(ex) == {"f"}
    tr.drop("t", "h2", "deleted")  # 3 jobs: every job again
    assert with_series(ex) == {"h3", "h4", "f"}
    assert [r.__dict__["per_job_series"] for r in caplog.records] == ["exceptions", "all"]


def test_per_job_series_is_set_globally_and_overridden_per_target() -> None:
    s = build_settings(
        {
            "global": {"per_job_series": "exceptions", "per_job_series_limit": 50},
            "targets": [
                {"name": "a", "provider": "basiq", "base_url": "https://x"},
                {"name": "b", "provider": "basiq", "base_url": "https://x", "per_job_series": "all"},
            ],
        },
        PROVIDERS,
    )
    a, b = s.resolved_targets()
    assert (a.per_job_series, a.per_job_series_limit) == ("exceptions", 50)
    assert b.per_job_series == "all"
    assert build_settings({}, PROVIDERS).global_.per_job_series == "auto"


@pytest.mark.parametrize(("old", "new"), [(True, "all"), (False, "none")])
def test_per_job_metrics_is_still_read_with_a_deprecation_line(
    old: bool, new: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncjob.config")
    s = build_settings(
        {
            "global": {"per_job_series": "exceptions"},
            "targets": [{"name": "t", "provider": "basiq", "base_url": "https://x", "per_job_metrics": old}],
        },
        PROVIDERS,
    )
    assert s.resolved(s.targets[0]).per_job_series == new
    assert any("per_job_metrics is deprecated" in r.getMessage() for r in caplog.records)


def test_step_names_past_the_cap_count_as_other_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    tr, ex = setup(max_step_names=2)
    caplog.set_level(logging.WARNING, logger="asyncjob.tracker")
    now = 1_000_000.0
    for n in range(3):
        running = tuple(Step(f"made-up-{n}-{i}", Status.RUNNING) for i in range(3))
        done = tuple(Step(s.name, Status.SUCCEEDED) for s in running)
        tr.track("t", Job(f"j{n}", Status.RUNNING, job_type="c", steps=running), "static", now=now)
        tr.update(tr.targets["t"], Job(f"j{n}", Status.SUCCEEDED, job_type="c", steps=done), now + 30)
    body = ex.render().decode()
    steps = {
        line.split('step="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if line.startswith("asyncjob_step_duration_seconds_count{")
    }
    assert steps == {"made-up-0-0", "made-up-0-1", "other"}
    other = 'asyncjob_step_duration_seconds_count{target="t",job_type="c",step="other"}'
    assert f"{other} 7" in body  # 9 steps finished, 2 under their own names
    capped = [r for r in caplog.records if "max_step_names" in r.getMessage()]
    assert len(capped) == 1


def test_a_reload_that_changes_the_mode_places_every_job_again() -> None:
    now = time.time()
    tr, ex = setup(per_job_series="all")
    a_fleet(tr, now)

    def reload(mode: str) -> None:
        s = build_settings(
            {
                "global": {"stuck_after": "10m", "max_duration": "1h", "retention": "1h"},
                "targets": [
                    {"name": "t", "provider": "basiq", "base_url": "https://x", "per_job_series": mode}
                ],
            },
            PROVIDERS,
        )
        tr.set_target(s.resolved(s.targets[0]))

    reload("none")
    assert with_series(ex) == set()
    reload("exceptions")
    assert with_series(ex) == NEED_A_PERSON
    reload("all")
    assert with_series(ex) == EVERY_JOB
    reload("exceptions")
    assert ex.jobs.due_at  # the quiet jobs wait for their deadlines
    tr.remove_target("t")
    ex.jobs.wake_due(now + 86400)  # a removed target's quiet jobs are not brought back
    assert with_series(ex) == set()


def test_per_job_metrics_that_contradicts_per_job_series_is_refused() -> None:
    with pytest.raises(ConfigError, match="contradicts per_job_series"):
        build_settings(
            {
                "targets": [
                    {
                        "name": "t",
                        "provider": "basiq",
                        "base_url": "https://x",
                        "per_job_metrics": False,
                        "per_job_series": "all",
                    }
                ]
            },
            PROVIDERS,
        )
