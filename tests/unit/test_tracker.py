"""The tracker: transitions, progress stamps, step timing, counted once, retention, cap."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from exporter.config import build_settings
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.tracker import CapReached, Tracker


def tracker(**glob: Any) -> Tracker:
    s = build_settings(
        {"global": glob, "targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    tr = Tracker()
    tr.set_target(s.resolved(s.targets[0]))
    return tr


def steps(*states: Status) -> tuple[Step, ...]:
    return tuple(Step(f"s{i}", st) for i, st in enumerate(states))


R, P, S, F = Status.RUNNING, Status.PENDING, Status.SUCCEEDED, Status.FAILED


def test_progress_stamp_moves_only_when_something_changes() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, steps=steps(R, P)), "static", now=100)
    t = tr.targets["t"].jobs["1"]
    assert t.last_progress == 100
    tr.apply("t", PollResult(jobs=[Job("1", R, steps=steps(R, P))]), now=200)
    assert t.last_progress == 100  # stuck: nothing moved
    tr.apply("t", PollResult(jobs=[Job("1", R, steps=steps(S, R))]), now=300)
    assert t.last_progress == 300


def test_the_providers_updated_stamp_wins_when_it_moves() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, updated=50), "static", now=100)
    assert tr.targets["t"].jobs["1"].last_progress == 50
    tr.apply("t", PollResult(jobs=[Job("1", R, updated=250)]), now=300)
    assert tr.targets["t"].jobs["1"].last_progress == 250


def test_step_durations_are_measured_between_polls() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, created=90, started=90, steps=steps(R, P, P)), "static", now=100)
    tr.apply("t", PollResult(jobs=[Job("1", R, created=90, started=90, steps=steps(S, R, P))]), now=110)
    tr.apply("t", PollResult(jobs=[Job("1", R, created=90, started=90, steps=steps(S, S, S))]), now=130)
    t = tr.targets["t"].jobs["1"]
    # s0 ran from the job's start to the poll that saw it done; s1 from there; s2 started
    # and finished between two polls: it starts where s1 was seen finished.
    assert t.step_duration == {"s0": 20, "s1": 20, "s2": 0}
    hist = tr.targets["t"].agg.step_duration[("", "s0")]
    assert hist.count == 1 and hist.total == 20


def test_every_job_shares_one_string_per_step_name() -> None:
    tr = tracker()
    for jid in ("1", "2"):
        # each answer parses its own copy of the name
        own = (Step("step-" + jid[:0] + "upload", R),)
        tr.track("t", Job(jid, R, created=90, started=90, steps=own), "static", now=100)
    a, b = (tr.targets["t"].jobs[j].step_times for j in ("1", "2"))
    assert a[0] == "step-upload" and a[0] is b[0]


def test_a_finished_job_is_counted_once_however_often_it_is_seen() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, created=0), "static", now=1)
    for now in (10, 20, 30):
        tr.apply("t", PollResult(jobs=[Job("1", F, created=0, finished=9, reason="job-timed-out")]), now=now)
    agg = tr.targets["t"].agg
    assert agg.finished[("", F)] == 1
    assert sum(n for (jt, reason, _), n in agg.failed.items() if reason == "job-timed-out") == 1
    assert agg.job_duration[("", "failed")].count == 1 and agg.job_duration[("", "failed")].total == 9


def test_finished_jobs_are_not_polled_and_drop_after_retention() -> None:
    tr = tracker(retention="60s")
    tr.track("t", Job("1", S), "static", now=100)
    tr.track("t", Job("2", R), "static", now=100)
    assert tr.pollable("t") == ["2"]
    assert tr.sweep(now=159) == 0
    assert tr.sweep(now=161) == 1
    assert "1" not in tr.targets["t"].jobs
    assert tr.targets["t"].agg.dropped["retention"] == 1
    # Discovery listing the dropped job again does not bring it back.
    tr.apply("t", PollResult(jobs=[Job("1", S)]), now=170)
    assert "1" not in tr.targets["t"].jobs


def test_the_cap_drops_the_excess_visibly() -> None:
    tr = tracker(max_jobs_per_target=2)
    tr.apply("t", PollResult(jobs=[Job(str(i), R) for i in range(5)]), now=1)
    assert len(tr.targets["t"].jobs) == 2
    assert tr.targets["t"].agg.dropped["cap"] == 3
    with pytest.raises(CapReached):
        tr.track("t", Job("x", R), "registered")


def test_a_job_the_provider_no_longer_knows_is_dropped_as_gone() -> None:
    tr = tracker()
    tr.track("t", Job("1", R), "static")
    tr.apply("t", PollResult(gone=["1"]))
    assert "1" not in tr.targets["t"].jobs and tr.targets["t"].agg.dropped["gone"] == 1


def test_the_status_gauge_follows_transitions() -> None:
    tr = tracker()
    tr.track("t", Job("1", P, job_type="report"), "static")
    tr.apply("t", PollResult(jobs=[Job("1", R, job_type="report")]))
    by = tr.targets["t"].agg.by_status
    assert by[("report", R)] == 1 and by[("report", P)] == 0


class Recorder:
    def __init__(self) -> None:
        self.changed: list[str] = []
        self.removed: list[str] = []

    def job_changed(self, state: Any, tracked: Any) -> None:
        self.changed.append(tracked.job.id)

    def job_removed(self, state: Any, job_id: str) -> None:
        self.removed.append(job_id)

    def tombstone_renewed(self, state: Any, job_id: str) -> None:
        pass


def test_listeners_hear_of_changes_only() -> None:
    tr = tracker()
    rec = Recorder()
    tr.listeners.append(rec)
    tr.track("t", Job("1", R), "discovered", now=1)
    tr.apply("t", PollResult(jobs=[Job("1", R)]), now=2)
    tr.apply("t", PollResult(jobs=[Job("1", S)]), now=3)
    tr.drop("t", "1", "deleted")
    assert rec.changed == ["1", "1"] and rec.removed == ["1"]


def test_a_static_job_first_polled_long_after_it_finished_gets_no_made_up_step_durations() -> None:
    tr = tracker()
    from exporter.model import placeholder

    tr.track("t", placeholder("1"), "static", now=1000)
    tr.apply("t", PollResult(jobs=[Job("1", S, created=10, started=10, steps=steps(S, S))]), now=5000)
    t = tr.targets["t"].jobs["1"]
    assert t.step_duration == {}
    assert all(h.count == 0 for h in tr.targets["t"].agg.step_duration.values())
    assert tr.targets["t"].agg.finished[("", S)] == 1


def test_counters_exist_at_zero_before_the_first_finish_so_rate_sees_it() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, job_type="report", steps=steps(R)), "discovered")
    agg = tr.targets["t"].agg
    assert agg.finished[("report", S)] == 0 and ("report", F) in agg.finished
    # Basiq's documented codes, each under its cause.
    assert {reason for jt, reason, _ in agg.failed if jt == "report"} >= {"invalid-credentials", "unknown"}
    assert agg.job_duration[("report", "succeeded")].count == 0
    assert agg.step_duration[("report", "s0")].count == 0


def test_a_placeholders_first_answer_takes_the_providers_stamp_not_the_registration_time() -> None:
    from exporter.model import placeholder

    tr = tracker()
    jobs = tr.targets["t"].jobs
    for job_id in ("updated", "created", "future", "none"):
        tr.track("t", placeholder(job_id), "registered", now=1000)
    tr.apply(
        "t",
        PollResult(
            jobs=[
                Job("updated", R, created=100, updated=400),
                Job("created", R, created=300),
                Job("future", R, updated=5000),  # a provider clock ahead of ours
                Job("none", R),
            ]
        ),
        now=1010,
    )
    assert jobs["updated"].last_progress == 400  # an hour still before the exporter knew of it
    assert jobs["created"].last_progress == 300
    assert jobs["future"].last_progress == 1010  # never later than now
    assert jobs["none"].last_progress == 1000  # nothing better than the registration
    # Later answers move it as before: only when something moves.
    tr.apply("t", PollResult(jobs=[Job("updated", R, created=100, updated=400)]), now=1100)
    assert jobs["updated"].last_progress == 400


def failed_count(tr: Tracker) -> int:
    return sum(tr.targets["t"].agg.failed.values())


def test_a_job_first_seen_finished_longer_ago_than_retention_is_history() -> None:
    tr = tracker(retention="15m")
    now = 10 * 86400.0
    week_old = Job("old", F, job_type="connection", created=now - 6 * 86400, updated=now - 6 * 86400 + 60)
    fresh = Job("new", F, job_type="connection", created=now - 300, finished=now - 240, reason="x")
    tr.apply("t", PollResult(jobs=[week_old, fresh]), now=now)
    state = tr.targets["t"]
    agg = state.agg
    assert state.jobs["old"].is_history and not state.jobs["new"].is_history
    assert agg.finished[("connection", F)] == 1  # the fresh failure only
    assert failed_count(tr) == 1
    assert agg.job_duration[("connection", "failed")].count == 1
    assert agg.by_status[("connection", F)] == 1  # history is not shown as tracked now
    # Seen again and again (Basiq lists a week of jobs): still not counted.
    tr.apply("t", PollResult(jobs=[week_old, fresh]), now=now + 30)
    assert agg.finished[("connection", F)] == 1 and failed_count(tr) == 1
    # Dropped at retention like any finished job, and not brought back by the next listing.
    tr.sweep(now=now + 900)
    assert "old" not in state.jobs and agg.by_status[("connection", F)] == 0
    tr.apply("t", PollResult(jobs=[week_old]), now=now + 960)
    assert "old" not in state.jobs and agg.finished[("connection", F)] == 1


def test_history_is_measured_from_when_the_exporter_learnt_of_the_job() -> None:
    from exporter.model import placeholder

    tr = tracker(retention="15m")
    tr.track("t", placeholder("before"), "static", now=10_000)
    tr.track("t", placeholder("after"), "registered", now=10_000)
    tr.track("t", placeholder("unknown-end"), "static", now=10_000)
    # First polled an hour later (the exporter was down): "after" ended after it was registered.
    tr.apply(
        "t",
        PollResult(
            jobs=[
                Job("before", F, updated=10_000 - 3600),
                Job("after", F, updated=10_000 + 60),
                Job("unknown-end", S, created=1),  # created alone says nothing of the end
            ]
        ),
        now=10_000 + 3600,
    )
    jobs = tr.targets["t"].jobs
    assert jobs["before"].is_history
    assert not jobs["after"].is_history and not jobs["unknown-end"].is_history
    assert tr.targets["t"].agg.finished[("", F)] == 1 and tr.targets["t"].agg.finished[("", S)] == 1


def test_history_survives_a_restart_uncounted() -> None:
    from exporter.state import tracked_from_dict, tracked_to_dict

    tr = tracker(retention="15m")
    tr.apply("t", PollResult(jobs=[Job("old", F, updated=1.0)]), now=100_000)
    saved = [tracked_from_dict(tracked_to_dict(t)) for t in tr.targets["t"].jobs.values()]
    again = Tracker()
    again.restore = lambda state: saved
    again.set_target(tr.targets["t"].config)
    again.apply("t", PollResult(jobs=[Job("old", F, updated=1.0)]), now=100_010)
    assert again.targets["t"].jobs["old"].is_history
    assert sum(again.targets["t"].agg.finished.values()) == 0 and failed_count(again) == 0


def test_a_rerun_under_the_same_id_counts_each_outcome_once() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, job_type="report"), "static", now=1)
    for now in (10, 20):
        tr.apply("t", PollResult(jobs=[Job("1", F, job_type="report", reason="x")]), now=now)
    tr.apply("t", PollResult(jobs=[Job("1", P, job_type="report")]), now=30)
    assert tr.pollable("t") == ["1"]
    for now in (40, 50):
        tr.apply("t", PollResult(jobs=[Job("1", S, job_type="report")]), now=now)
    agg = tr.targets["t"].agg
    assert agg.finished[("report", F)] == 1 and agg.finished[("report", S)] == 1


def test_a_history_job_rerun_under_its_id_is_news_again() -> None:
    tr = tracker(retention="15m")
    tr.apply("t", PollResult(jobs=[Job("1", F, updated=1.0)]), now=100_000)
    tr.apply("t", PollResult(jobs=[Job("1", R, updated=100_050)]), now=100_060)
    assert not tr.targets["t"].jobs["1"].is_history
    tr.apply("t", PollResult(jobs=[Job("1", S, updated=100_100)]), now=100_120)
    assert tr.targets["t"].agg.finished[("", S)] == 1


def cause_tracker(monkeypatch: pytest.MonkeyPatch, cause_map: dict[str, str]) -> Tracker:
    from exporter.model import Cause
    from exporter.providers.basiq import Basiq

    monkeypatch.setattr(
        Basiq,
        "causes",
        {
            "invalid-credentials": Cause.USER,
            "maintenance": Cause.PROVIDER,
            "user-action-required": Cause.USER,
        },
    )
    s = build_settings(
        {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x", "cause_map": cause_map}]},
        PROVIDERS,
    )
    tr = Tracker()
    tr.set_target(s.resolved(s.targets[0]))
    return tr


def test_the_cause_is_the_targets_map_then_the_answer_then_the_providers_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exporter.model import Cause

    tr = cause_tracker(monkeypatch, {"maintenance": "user", "user-action-required": "provider"})
    answers = [
        Job("map", F, job_type="c", reason="maintenance"),  # provider's map: provider; target's: user
        Job("answer", F, job_type="c", reason="odd-code", cause=Cause.USER),  # the answer says
        Job("over", F, job_type="c", reason="user-action-required", cause=Cause.USER),  # target wins
        Job("provider", F, job_type="c", reason="invalid-credentials"),
        Job("nobody", F, job_type="c", reason="odd-code"),
        Job("no-reason", F, job_type="c"),
    ]
    tr.apply("t", PollResult(jobs=answers), now=1)
    jobs = tr.targets["t"].jobs
    assert {j: t.cause for j, t in jobs.items()} == {
        "map": Cause.USER,
        "answer": Cause.USER,
        "over": Cause.PROVIDER,
        "provider": Cause.USER,
        "nobody": Cause.UNKNOWN,
        "no-reason": Cause.UNKNOWN,
    }
    failed = tr.targets["t"].agg.failed
    assert failed[("c", "maintenance", Cause.USER)] == 1
    assert failed[("c", "odd-code", Cause.USER)] == 1 and failed[("c", "odd-code", Cause.UNKNOWN)] == 1
    assert failed[("c", "user-action-required", Cause.PROVIDER)] == 1
    assert failed[("c", "unknown", Cause.UNKNOWN)] == 1
    # A running job has no cause.
    tr.apply("t", PollResult(jobs=[Job("r", R, job_type="c")]), now=2)
    assert jobs["r"].cause is None


def test_the_causes_and_reasons_come_with_the_target_not_from_the_registry() -> None:
    from exporter.model import Cause
    from exporter.providers.basiq import Basiq

    class Unlisted(Basiq):  # in no registry: only the resolved target knows it
        causes = {"own-code": Cause.USER}
        known_reasons = ("own-code",)

    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tr = Tracker()
    tr.set_target(s.resolved(s.targets[0]).model_copy(update={"provider_class": Unlisted}))
    tr.apply("t", PollResult(jobs=[Job("1", F, job_type="c", reason="own-code")]), now=1)
    assert tr.targets["t"].jobs["1"].cause is Cause.USER
    failed = tr.targets["t"].agg.failed
    assert failed[("c", "own-code", Cause.USER)] == 1
    assert ("c", "invalid-credentials", Cause.USER) not in failed  # Basiq's own, not this target's


def test_counters_start_at_zero_for_each_known_reason_under_its_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exporter.model import Cause

    tr = cause_tracker(monkeypatch, {"maintenance": "unknown"})
    tr.track("t", Job("1", R, job_type="c"), "discovered")
    failed = tr.targets["t"].agg.failed
    assert (
        failed[("c", "invalid-credentials", Cause.USER)] == 0
        and ("c", "invalid-credentials", Cause.USER) in failed
    )
    assert ("c", "maintenance", Cause.UNKNOWN) in failed and (
        "c",
        "maintenance",
        Cause.PROVIDER,
    ) not in failed
    assert ("c", "unknown", Cause.UNKNOWN) in failed
    from exporter.providers.basiq import Basiq

    assert {reason for _, reason, _ in failed} == {*Basiq.known_reasons, "unknown"}


def test_a_reload_with_a_new_cause_map_gives_tracked_failures_their_new_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exporter.model import Cause

    tr = cause_tracker(monkeypatch, {})
    tr.apply("t", PollResult(jobs=[Job("1", F, reason="maintenance")]), now=1)

    def cause() -> Cause | None:
        return tr.targets["t"].jobs["1"].cause

    assert cause() is Cause.PROVIDER
    s = build_settings(
        {
            "targets": [
                {
                    "name": "t",
                    "provider": "basiq",
                    "base_url": "https://x",
                    "cause_map": {"maintenance": "user"},
                }
            ]
        },
        PROVIDERS,
    )
    tr.set_target(s.resolved(s.targets[0]))
    assert cause() is Cause.USER


def test_a_rerun_that_keeps_its_id_is_tracked_again_and_each_outcome_counts_once() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, created=0), "static", now=1)
    # The poll that sees the failure reruns the job; the service answers the same id, queued.
    failed = Job("1", F, created=0, finished=9, reason="failed")
    tr.apply("t", PollResult(jobs=[failed, Job("1", P, created=0)], replaced={"1": "1"}), now=10)
    t = tr.targets["t"].jobs["1"]
    assert t.job.status is P and t.reruns == 1
    assert tr.pollable("t") == ["1"]
    for now in (20, 30):  # its new outcome, seen twice, counts once
        tr.apply("t", PollResult(jobs=[Job("1", S, created=0, finished=19)]), now=now)
    agg = tr.targets["t"].agg
    assert agg.finished[("", F)] == 1 and agg.finished[("", S)] == 1
    assert agg.reruns[""] == 1
    assert "1" not in tr.targets["t"].tombstones


def test_a_rerun_whose_first_answers_still_show_the_failure_counts_each_outcome_once() -> None:
    tr = tracker()
    tr.track("t", Job("1", R, created=0), "static", now=1)
    # The rerun is asked; the service answers the same id, still failed (not re-queued yet).
    failed = Job("1", F, created=0, finished=9, reason="failed")
    rerun = Job("1", F, created=0, finished=9, reason="failed", attempts=1)
    tr.apply("t", PollResult(jobs=[failed, rerun], replaced={"1": "1"}), now=10)
    # Still failed, changed, before it is queued again: the same failure, not a new one.
    tr.apply("t", PollResult(jobs=[Job("1", F, created=0, finished=9, reason="failed", updated=15)]), now=20)
    # The new run went by between polls: its success is the next answer.
    for now in (30, 40):
        tr.apply("t", PollResult(jobs=[Job("1", S, created=0, finished=25)]), now=now)
    agg = tr.targets["t"].agg
    assert agg.finished[("", F)] == 1 and agg.finished[("", S)] == 1
    assert sum(agg.failed.values()) == 1


def test_a_job_first_seen_finished_without_a_start_records_no_duration() -> None:
    tr = tracker()
    # An Oxlin sync whose only event read was its last: when it began is unknown.
    tr.apply("t", PollResult(jobs=[Job("a", S, finished=100, updated=100)]), now=130)
    # One seen running first has a duration from the time it was first seen.
    tr.apply("t", PollResult(jobs=[Job("b", R)]), now=100)
    tr.apply("t", PollResult(jobs=[Job("b", S, finished=110)]), now=120)
    agg = tr.targets["t"].agg
    assert agg.finished[("", S)] == 2
    hist = agg.job_duration[("", "succeeded")]
    assert hist.count == 1 and hist.total == 10


def test_the_api_says_who_must_act_and_what_is_history(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.runtime import job_document

    tr = cause_tracker(monkeypatch, {})
    now = 1_000_000.0
    tr.apply(
        "t",
        PollResult(
            jobs=[
                Job("user", F, reason="invalid-credentials", updated=now - 5),
                Job("old", F, reason="maintenance", updated=now - 86400),
                Job("running", R),
            ]
        ),
        now=now,
    )
    docs = {j: job_document("t", t) for j, t in tr.targets["t"].jobs.items()}
    assert (docs["user"]["cause"], docs["user"]["is_history"]) == ("user", False)
    assert (docs["old"]["cause"], docs["old"]["is_history"]) == ("provider", True)
    assert (docs["running"]["cause"], docs["running"]["is_history"]) == (None, False)


def _lines_run(call: Any) -> int:
    """Python lines executed by `call()`: a measure of work that does not depend on the machine."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "line"
        return trace

    before = sys.gettrace()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(before)
    return count


def test_an_answer_with_many_steps_costs_work_in_proportion_to_its_steps() -> None:
    # An answer's steps have no bound but max_response_bytes (a Basiq job of thousands of steps is
    # a few hundred KB): timing them must not look each step up in all the others.
    def work(n: int) -> int:
        tr = tracker()
        tr.track("t", Job("1", R, created=1.0, steps=steps(*[R] * n)), "static", now=2)
        answer = PollResult(jobs=[Job("1", R, created=1.0, steps=steps(*[S] * n))])
        lines = _lines_run(lambda: tr.apply("t", answer, now=3))
        # The first step ran from the job's creation; each next one is seen starting as it ends.
        assert tr.targets["t"].jobs["1"].step_duration == {"s0": 2.0} | {f"s{i}": 0.0 for i in range(1, n)}
        return lines

    assert work(800) <= 2.5 * work(400)


def test_tombstones_in_memory_are_bounded_to_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exporter.tracked.TOMBSTONES_IN_MEMORY", 100)
    tr = tracker(retention="1s")
    for i in range(1000):
        tr.track("t", Job(f"j{i}", S, finished=0), "discovered", now=1)
        tr.drop("t", f"j{i}", "retention")
    tombstones = tr.targets["t"].tombstones
    assert list(tombstones) == [f"j{i}" for i in range(900, 1000)]  # the newest, oldest first


def test_a_dropped_job_out_of_memory_is_looked_up_before_it_is_tracked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("exporter.tracked.TOMBSTONES_IN_MEMORY", 1)
    tr = tracker()
    kept: dict[str, float] = {}
    tr.buried = lambda target, job_id: kept.get(job_id)
    for job_id in ("old", "new"):
        tr.track("t", Job(job_id, S, finished=0), "discovered", now=1)
        tr.drop("t", job_id, "retention")
        kept[job_id] = tr.targets["t"].tombstones[job_id]
    assert "old" not in tr.targets["t"].tombstones
    finished = tr.targets["t"].agg.finished[("", S)]
    tr.apply("t", PollResult(jobs=[Job("old", S, finished=0), Job("other", S, finished=0)]), now=2)
    assert set(tr.targets["t"].jobs) == {"other"}
    assert tr.targets["t"].agg.finished[("", S)] == finished + 1  # "other"'s finish only


def test_jobs_in_an_undocumented_state_are_counted_by_their_raw_status_while_they_are_in_it() -> None:
    from exporter.render.aggregates import render_aggregates

    tr = tracker()
    U = Status.UNKNOWN
    for i in range(3):
        tr.track("t", Job(f"u{i}", U, "ON_HOLD", "connection"), "static", now=100)
    tr.track("t", Job("p", U, "paused", "report"), "static", now=100)
    agg = tr.targets["t"].agg
    assert agg.undocumented == {("connection", "ON_HOLD"): 3, ("report", "paused"): 1}
    tr.apply("t", PollResult(jobs=[Job("u0", S, "success", "connection")]), now=200)
    tr.apply("t", PollResult(jobs=[Job("p", R, "in-progress", "report")]), now=200)
    assert agg.undocumented == {("connection", "ON_HOLD"): 2}
    text = render_aggregates([tr.targets["t"]]).decode()
    assert 'asyncjob_jobs_undocumented{target="t",job_type="connection",raw_status="ON_HOLD"} 2' in text
    assert 'raw_status="paused"' not in text


def test_undocumented_raw_statuses_past_the_first_twenty_are_other() -> None:
    from exporter.tracked import UNDOCUMENTED_LABELS

    tr = tracker()
    for i in range(UNDOCUMENTED_LABELS + 5):
        tr.track("t", Job(f"u{i}", Status.UNKNOWN, f"state-{i}"), "static", now=100)
    agg = tr.targets["t"].agg
    assert len(agg.undocumented) == UNDOCUMENTED_LABELS + 1
    assert agg.undocumented[("", "other")] == 5
    assert len(agg.undocumented_labels) == UNDOCUMENTED_LABELS
