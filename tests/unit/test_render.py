"""The exposition: valid text, escaped labels, per-job bytes replaced on change, one gzip member."""

from __future__ import annotations

import gzip
import subprocess
import time
import zlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import build_settings
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.render import Exposition
from exporter.render.groups import GROUP_SIZE
from exporter.render.text import escape
from exporter.tracker import Tracker
from tests.tools import require_tool


def setup(per_job: bool = True) -> tuple[Tracker, Exposition]:
    s = build_settings(
        {
            "targets": [
                {
                    "name": "t",
                    "provider": "basiq",
                    "base_url": "https://x",
                    "per_job_series": "all" if per_job else "none",
                }
            ]
        },
        PROVIDERS,
    )
    tr = Tracker()
    ex = Exposition(tr, lambda: {"t": (3, {"http_5xx": 1})})
    tr.set_target(s.resolved(s.targets[0]))
    return tr, ex


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_escape_quotes_backslashes_and_newlines() -> None:
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_a_job_renders_its_state_set_steps_and_stamps() -> None:
    tr, ex = setup()
    tr.track(
        "t",
        Job(
            "1",
            Status.FAILED,
            job_type="connection",
            created=10,
            reason="maintenance",
            steps=(Step("verify-credentials", Status.FAILED),),
        ),
        "static",
        now=20,
    )
    got = samples(ex.render().decode())
    base = {("target", "t"), ("job_id", "1")}
    assert got[("asyncjob_job_status", frozenset(base | {("status", "failed")}))] == 1
    assert got[("asyncjob_job_status", frozenset(base | {("status", "running")}))] == 0
    # Basiq's map may say nothing of `maintenance` yet: no cause known is `unknown`, never absent.
    error = {k: v for k, v in got.items() if k[0] == "asyncjob_job_error_info"}
    assert list(error.values()) == [1]
    assert dict(next(iter(error))[1]).keys() == {"target", "job_id", "reason", "cause"}
    assert ("reason", "maintenance") in next(iter(error))[1]
    assert (
        got[
            (
                "asyncjob_job_step_status",
                frozenset(base | {("step", "verify-credentials"), ("status", "failed")}),
            )
        ]
        == 1
    )
    assert got[("asyncjob_job_created_timestamp_seconds", frozenset(base))] == 10
    assert (
        got[
            (
                "asyncjob_jobs_finished_total",
                frozenset({("target", "t"), ("job_type", "connection"), ("status", "failed")}),
            )
        ]
        == 1
    )
    assert got[("asyncjob_poll_errors_total", frozenset({("target", "t"), ("reason", "http_5xx")}))] == 1


def test_hostile_label_values_stay_valid_exposition() -> None:
    tr, ex = setup()
    nasty = 'x"y\\z\nw ünï €'
    tr.track(
        "t",
        Job(nasty, Status.FAILED, job_type=nasty, reason=nasty, steps=(Step(nasty, Status.RUNNING),)),
        "static",
    )
    text = ex.render().decode()
    ids = {s.labels.get("job_id") for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert nasty in ids
    r = subprocess.run(
        [require_tool("promtool"), "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert r.returncode == 0, r.stderr.decode()


def test_removed_jobs_vanish_and_changed_jobs_are_replaced() -> None:
    tr, ex = setup()
    tr.track("t", Job("1", Status.RUNNING), "static")
    tr.track("t", Job("2", Status.RUNNING), "static")
    tr.apply("t", PollResult(jobs=[Job("1", Status.SUCCEEDED)]))
    tr.drop("t", "2", "deleted")
    text = ex.render().decode()
    assert 'job_id="2"' not in text
    assert 'asyncjob_job_status{target="t",job_id="1",status="succeeded"} 1' in text
    assert 'asyncjob_job_status{target="t",job_id="1",status="running"} 0' in text


def test_families_stay_contiguous_across_groups() -> None:
    tr, ex = setup()
    for i in range(GROUP_SIZE * 2 + 5):
        tr.track("t", Job(str(i), Status.RUNNING), "static")
    names = []
    for fam in text_string_to_metric_families(ex.render().decode()):
        names.append(fam.name)
    assert len(names) == len(set(names))  # the parser would split a non-contiguous family


def test_every_client_gets_one_gzip_member_that_decodes_to_the_plain_text() -> None:
    tr, ex = setup()
    for i in range(GROUP_SIZE * 3 + 3):
        tr.track("t", Job(str(i), Status.RUNNING, percent=i % 100), "static")
    plain = stable(ex.render(gz=False))
    body = ex.render(gz=True)
    assert stable(gzip.decompress(body)) == plain  # the gzip module checks the CRC-32 and size
    d = zlib.decompressobj(31)  # a reader that stops after the first member reads it all
    assert stable(d.decompress(body)) == plain and d.eof and d.unused_data == b""


def test_promtool_reads_the_served_body() -> None:
    promtool = require_tool("promtool")
    tr, ex = setup()
    for i in range(GROUP_SIZE * 2 + 1):
        tr.track(
            "t", Job(str(i), Status.FAILED, reason="maintenance", steps=(Step("a", Status.FAILED),)), "static"
        )
    r = subprocess.run(
        [promtool, "check", "metrics"], input=gzip.decompress(ex.render(gz=True)), capture_output=True
    )
    assert r.returncode == 0, r.stderr.decode()


def test_the_served_body_follows_changes_and_removals() -> None:
    tr, ex = setup()
    for i in range(GROUP_SIZE * 2):
        tr.track("t", Job(str(i), Status.RUNNING), "static")
    ex.render(gz=True)
    tr.drop("t", "0", "deleted")
    tr.apply("t", PollResult(jobs=[Job(str(GROUP_SIZE + 1), Status.SUCCEEDED)]))
    text = gzip.decompress(ex.render(gz=True))
    assert b'job_id="0"' not in text
    assert f'job_id="{GROUP_SIZE + 1}",status="succeeded"}} 1'.encode() in text
    assert stable(text) == stable(ex.render(gz=False))


def test_a_scrape_between_refreshes_serves_the_last_assembled_body_whole() -> None:
    tr, ex = setup()
    tr.track("t", Job("1", Status.RUNNING), "static")
    before = gzip.decompress(ex.render(gz=True, fresh=False))
    tr.track("t", Job("2", Status.RUNNING), "static")
    stale = gzip.decompress(ex.render(gz=True, fresh=False))  # the background has not run yet
    assert b'job_id="1"' in stale and b'job_id="2"' not in stale
    assert job_lines(stale) == job_lines(before)  # the scrape-time families are live
    assert b'job_id="2"' in gzip.decompress(ex.render(gz=True, fresh=True))


def test_new_jobs_fill_the_room_that_dropped_jobs_left() -> None:
    tr, ex = setup()
    for i in range(GROUP_SIZE * 3):
        tr.track("t", Job(str(i), Status.RUNNING), "static")
    for i in range(0, GROUP_SIZE * 3, 3):  # a third of every group goes
        tr.drop("t", str(i), "deleted")
    for i in range(GROUP_SIZE):
        tr.track("t", Job(f"new-{i}", Status.RUNNING), "static")
    assert len(ex.jobs.groups["t"]) == 3
    assert sum(len(g.jobs) for g in ex.jobs.groups["t"]) == GROUP_SIZE * 3


def job_lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if b"job_id=" in line]


def stable(body: bytes) -> bytes:
    """The body without the process figures that move between two scrapes (CPU, GC, tasks)."""
    moving = (b"process_", b"python_gc_", b"asyncjob_exporter_tasks ")
    return b"\n".join(line for line in body.split(b"\n") if not line.startswith(moving))


def test_per_job_series_none_keeps_only_aggregates() -> None:
    tr, ex = setup(per_job=False)
    tr.track("t", Job("1", Status.SUCCEEDED), "static")
    text = ex.render().decode()
    assert 'job_id="1"' not in text
    assert 'asyncjob_jobs_finished_total{target="t",job_type="",status="succeeded"} 1' in text


@pytest.mark.parametrize("value", [0.5, 1e-7, 1465377032.0, 3])
def test_values_round_trip(value: float) -> None:
    tr, ex = setup()
    tr.track("t", Job("1", Status.RUNNING, percent=value, created=value), "static")
    got = samples(ex.render().decode())
    assert (
        got[("asyncjob_job_created_timestamp_seconds", frozenset({("target", "t"), ("job_id", "1")}))]
        == value
    )


def test_staleness_counts_from_the_oldest_change_the_served_body_lacks() -> None:
    tr, ex = setup()
    tr.track("t", Job("1", Status.RUNNING), "static")
    ex.render(gz=True)
    assert ex.jobs.staleness() == 0.0
    tr.track("t", Job("2", Status.RUNNING), "static")
    ex.render(gz=True, fresh=False)  # served without the change
    assert ex.jobs.staleness() > 0.0
    ex.render(gz=True)
    assert ex.jobs.staleness() == 0.0


def test_failures_carry_their_cause_and_history_has_no_series() -> None:
    s = build_settings(
        {
            "global": {"retention": "15m"},
            "targets": [
                {
                    "name": "t",
                    "provider": "basiq",
                    "base_url": "https://x",
                    "cause_map": {"invalid-credentials": "user", "odd": "provider"},
                }
            ],
        },
        PROVIDERS,
    )
    tr = Tracker()
    ex = Exposition(tr, lambda: {})
    tr.set_target(s.resolved(s.targets[0]))
    now = 1_000_000.0
    tr.apply(
        "t",
        PollResult(
            jobs=[
                Job("u", Status.FAILED, job_type="c", reason="invalid-credentials", updated=now - 5),
                Job("p", Status.FAILED, job_type="c", reason="odd", updated=now - 5),
                Job("old", Status.FAILED, job_type="c", reason="odd", updated=now - 86400),
            ]
        ),
        now=now,
    )
    text = ex.render().decode()
    got = samples(text)
    base = {("target", "t"), ("job_type", "c")}
    error = {dict(k[1])["job_id"]: dict(k[1]) for k in got if k[0] == "asyncjob_job_error_info"}
    assert error.keys() == {"u", "p"}  # the week-old failure is history: no series, no page
    assert error["u"]["cause"] == "user" and error["p"]["cause"] == "provider"
    assert 'job_id="old"' not in text
    failed = "asyncjob_jobs_failed_total"
    assert got[(failed, frozenset(base | {("reason", "invalid-credentials"), ("cause", "user")}))] == 1
    assert got[(failed, frozenset(base | {("reason", "odd"), ("cause", "provider")}))] == 1  # not 2
    assert got[("asyncjob_jobs", frozenset(base | {("status", "failed")}))] == 2


@pytest.mark.anyio
async def test_changes_arriving_together_cost_one_rendering_of_their_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of registrations fills a group a job at a time: the background refresh waits
    SETTLE after the group's first change, then renders it once with all of them."""
    import anyio

    from exporter.render import groups

    tr, ex = setup()
    ex.render(gz=True)
    renders = 0
    refresh = groups.Group.refresh

    def counting(group: groups.Group) -> bool:
        nonlocal renders
        renders += 1
        return refresh(group)

    monkeypatch.setattr(groups.Group, "refresh", counting)
    monkeypatch.setattr(groups, "SETTLE", 1.0)  # the burst below surely lands within it
    async with anyio.create_task_group() as tg:
        tg.start_soon(ex.jobs.refresh_in_background)
        for i in range(GROUP_SIZE):  # one group's worth, a job a loop turn
            tr.track("t", Job(f"r{i}", Status.PENDING), "registered")
            await anyio.sleep(0)
        with anyio.fail_after(5):
            while ex.jobs.staleness() > 0 or ex.jobs.dirty:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert renders == 1
    served = ex.render(gz=False, fresh=False)
    assert all(f'job_id="r{i}"'.encode() in served for i in range(GROUP_SIZE))


def test_a_connection_only_its_user_can_fix_says_so() -> None:
    from exporter.model import Connection

    tr, ex = setup()
    conns = [Connection("c1", "FAILED", awaiting_user=True), Connection("c2", "FAILED")]
    tr.apply("t", PollResult(connections=conns), now=1)
    got = samples(ex.render().decode())
    awaiting = "asyncjob_connection_awaiting_user"
    assert got[(awaiting, frozenset({("target", "t"), ("connection_id", "c1")}))] == 1
    assert got[(awaiting, frozenset({("target", "t"), ("connection_id", "c2")}))] == 0


@pytest.mark.anyio
async def test_the_idle_background_refresh_waits_for_news_not_for_a_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import anyio

    tr, ex = setup()
    ex.render(gz=True)
    looks = 0
    wake_due = ex.jobs.wake_due

    def counted(now: float) -> None:
        nonlocal looks
        looks += 1
        wake_due(now)

    monkeypatch.setattr(ex.jobs, "wake_due", counted)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ex.jobs.refresh_in_background)
        await anyio.sleep(1.5)
        assert looks <= 3  # at most once a second with nothing to do (it ticked ten times)
        changed = time.monotonic()
        tr.track("t", Job("news", Status.PENDING), "registered")
        with anyio.fail_after(5):
            while b'job_id="news"' not in ex.render(gz=False, fresh=False):
                await anyio.sleep(0.005)
        assert time.monotonic() - changed < 0.5  # woken by the change: SETTLE, not the idle wait
        tg.cancel_scope.cancel()
