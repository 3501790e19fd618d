"""A job's observed transitions: recorded by the tracker, bounded, kept in the state file, served."""

from __future__ import annotations

import json
import sys

import pytest

from exporter.config import build_settings
from exporter.history import HISTORY_MAX, entries, from_row, timeline, to_row
from exporter.model import Job, Status, Step, placeholder
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.runtime import job_document
from exporter.state import tracked_from_dict, tracked_to_dict
from exporter.tracker import Tracker

R, P, S, F = Status.RUNNING, Status.PENDING, Status.SUCCEEDED, Status.FAILED


def tracker() -> Tracker:
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tr = Tracker()
    tr.set_target(s.resolved(s.targets[0]))
    return tr


def job(status: Status, *steps: tuple[str, Status], awaiting: bool = False) -> Job:
    return Job("1", status, steps=tuple(Step(n, st) for n, st in steps), awaiting_user=awaiting)


def test_status_and_step_changes_are_recorded_with_the_time_they_were_seen() -> None:
    tr = tracker()
    tr.track("t", placeholder("1"), "registered", now=100)
    tr.apply("t", PollResult(jobs=[job(R, ("verify", R), ("fetch", P))]), now=110)
    tr.apply("t", PollResult(jobs=[job(R, ("verify", R), ("fetch", P))]), now=120)  # nothing moved
    tr.apply("t", PollResult(jobs=[job(R, ("verify", S), ("fetch", R))]), now=130)
    tr.apply("t", PollResult(jobs=[job(F, ("verify", S), ("fetch", F))]), now=150)
    assert entries(tr.targets["t"].jobs["1"].history) == [
        (100, "", P),
        (110, "", R),
        (110, "verify", R),
        (130, "verify", S),
        (130, "fetch", R),
        (150, "", F),
        (150, "fetch", F),
    ]


def test_the_timeline_gives_each_state_its_duration() -> None:
    row: list[float | str] = [100.0, "", "pending", 110.0, "", "running"]
    row += [110.0, "a", "running", 130.0, "a", "succeeded"]
    rows = timeline(from_row(row), now=200.0)
    assert [r["duration_seconds"] for r in rows] == [10.0, 90.0, 20.0, None]
    assert rows[2]["step"] == "a" and rows[0]["step"] is None


def test_waiting_for_the_end_user_is_a_transition() -> None:
    tr = tracker()
    tr.track("t", job(R, ("mfa", R)), "discovered", now=1)
    tr.apply("t", PollResult(jobs=[job(R, ("mfa", R), awaiting=True)]), now=2)
    tr.apply("t", PollResult(jobs=[job(R, ("mfa", S))]), now=3)
    statuses = [
        (at, step, str(status)) for at, step, status in entries(tr.targets["t"].jobs["1"].history) if not step
    ]
    assert statuses == [(1, "", "running"), (2, "", "awaiting_user"), (3, "", "running")]


def test_the_history_is_bounded_and_keeps_the_first_observation() -> None:
    tr = tracker()
    tr.track("t", job(P), "discovered", now=0)
    for i in range(1, 200):
        tr.apply("t", PollResult(jobs=[job(R if i % 2 else P)]), now=i)
    history = entries(tr.targets["t"].jobs["1"].history)
    assert len(history) == HISTORY_MAX
    assert history[0] == (0, "", P) and history[-1][0] == 199


def test_the_history_survives_the_state_file_and_is_served_by_the_api() -> None:
    tr = tracker()
    tr.track("t", job(R, ("a", R)), "discovered", now=10)
    tr.apply("t", PollResult(jobs=[job(S, ("a", S))]), now=20)
    tracked = tr.targets["t"].jobs["1"]
    row = json.loads(json.dumps(tracked_to_dict(tracked)))
    # The state file holds it as it always did: a flat list of plain values, readable.
    assert row["history"] == [
        10.0,
        "",
        "running",
        10.0,
        "a",
        "running",
        20.0,
        "",
        "succeeded",
        20.0,
        "a",
        "succeeded",
    ]
    restored = tracked_from_dict(row)
    assert restored.history == tracked.history
    doc = job_document("t", restored)
    assert [(h["at"], h["step"], h["status"]) for h in doc["history"]] == [
        (10.0, None, "running"),
        (10.0, "a", "running"),
        (20.0, None, "succeeded"),
        (20.0, "a", "succeeded"),
    ]
    assert doc["history"][0]["duration_seconds"] == 10.0


def test_a_full_history_costs_a_few_bytes_a_transition_and_no_object_of_its_own() -> None:
    tr = tracker()
    tr.track("t", job(P), "discovered", now=0)
    for i in range(1, 200):
        tr.apply("t", PollResult(jobs=[job(R if i % 2 else P, ("a", R if i % 2 else S))]), now=1e9 + i / 7)
    history = tr.targets["t"].jobs["1"].history
    assert len(entries(history)) == HISTORY_MAX
    # One bytes object: no float, list slot or string a transition (a list cost 42 B each).
    assert sys.getsizeof(history) <= 40 + 12 * HISTORY_MAX
    assert entries(from_row(to_row(history))) == entries(history)  # times kept exactly


def test_a_broken_history_in_the_state_file_is_named() -> None:
    for row in ([1.0, "", "running", 2.0], [1.0, "", 3], ["x", "", "running"], {"at": 1.0}):
        with pytest.raises(ValueError):
            from_row(row)


def test_step_names_an_answer_makes_up_do_not_grow_the_process_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A provider answering a new step name at every poll, for ever (broken or hostile): the
    # process-wide table of (step, status) pairs stays bounded, and each job keeps its names.
    from exporter import history

    # On a copy of the table: the tests after this one start from the table they would have.
    monkeypatch.setattr(history, "_PAIRS", list(history._PAIRS))
    monkeypatch.setattr(history, "_CODES", dict(history._CODES))
    monkeypatch.setattr(history, "_fixed_size", history._fixed_size)
    names = [f"made-up-{i}-{'x' * (i % 7)}" for i in range(history.PAIRS_MAX + 500)]
    names.append("a title far longer than any step name " * 300)
    h, old = history.EMPTY, None
    for i, name in enumerate(names):
        new = job(R, (name, R))
        h, old = history.observe(h, old, new, now=1000.0 + i), new
        assert len(history._PAIRS) <= history.PAIRS_MAX
    assert all(len(step) + len(status) <= history.NAME_MAX for step, status in history._PAIRS)
    # The job's own history is as it would be with every pair in the table: first, then latest.
    seen = entries(h)
    assert len(seen) == HISTORY_MAX
    assert seen[0] == (1000.0, "", R)
    assert seen[1:] == [(1000.0 + i, name, R) for i, name in enumerate(names)][-(HISTORY_MAX - 1) :]
    assert all(type(status) is Status for _, _, status in seen)
    assert from_row(to_row(h)) == h and entries(from_row(to_row(h))) == seen
    assert [r["step"] for r in timeline(h, now=1e9)][-2:] == names[-2:]
    # A state file row naming more pairs than the table holds reads back whole too.
    row: list[float | str] = [v for i, name in enumerate(names[:30]) for v in (float(i), name, "running")]
    assert [step for _, step, _ in entries(from_row(row))] == [names[0], *names[7:30]]
