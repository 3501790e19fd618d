"""The job objectives' SLI as the exporter counts it: good, bad or the end user's, each job once
per objective, across restarts, in `asyncjob_slo_jobs_total`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.commands import check_config
from exporter.config import ConfigError, build_settings
from exporter.model import Job, Status, placeholder
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.render import Exposition
from exporter.runtime import connect_store
from exporter.state import Store
from exporter.tracker import Tracker

R, S, F = Status.RUNNING, Status.SUCCEEDED, Status.FAILED
SLO = {"name": "refresh", "target": "t", "job_type": "connection", "objective": 0.99, "latency": "5m"}


def settings(*slos: dict[str, Any]) -> Any:
    return build_settings(
        {
            "targets": [
                {"name": "t", "provider": "basiq", "base_url": "https://x"},
                {"name": "other", "provider": "basiq", "base_url": "https://y"},
            ],
            "slos": list(slos) or [SLO],
        },
        PROVIDERS,
    )


def tracker(*slos: dict[str, Any], store: Store | None = None) -> Tracker:
    s = settings(*slos)
    tr = Tracker()
    if store is not None:
        connect_store(store, tr, type("NoScheduler", (), {"store": None})(), history=store)
    for t in s.targets:
        tr.set_target(s.resolved(t))
    return tr


def counts(tr: Tracker, target: str = "t") -> dict[tuple[str, str, str], int]:
    return {key: n for key, n in tr.targets[target].agg.slo.items() if n}


def job(job_id: str, status: Status, job_type: str = "connection", **more: Any) -> Job:
    return Job(job_id, status, job_type=job_type, created=0, **more)


def test_a_job_that_succeeds_within_its_latency_is_good_and_a_late_one_bad() -> None:
    tr = tracker()
    tr.track("t", job("fast", S, finished=299), "static", now=300)
    tr.track("t", job("slow", S, finished=301), "static", now=302)
    assert counts(tr) == {("connection", "refresh", "good"): 1, ("connection", "refresh", "bad"): 1}


def test_a_success_ends_at_its_finished_stamp_else_its_update_else_the_poll_that_saw_it() -> None:
    tr = tracker()
    tr.track("t", job("updated", S, updated=200), "discovered", now=400)  # first seen finished
    tr.track("t", job("unknown", S), "discovered", now=400)  # ended when? not judged
    tr.track("t", job("seen", R), "static", now=100)
    tr.apply("t", PollResult(jobs=[job("seen", S)]), now=350)  # seen ending at 350: late
    assert counts(tr) == {("connection", "refresh", "good"): 1, ("connection", "refresh", "bad"): 1}
    assert tr.targets["t"].jobs["updated"].slo_counted == ("refresh",)
    assert tr.targets["t"].jobs["unknown"].slo_counted == ()


def test_failures_are_bad_unless_the_end_user_caused_them() -> None:
    tr = tracker()
    tr.track("t", job("p", F, finished=10, reason="connector-error"), "static", now=20)
    tr.track("t", job("u", F, finished=10, reason="invalid-credentials"), "static", now=20)
    tr.track("t", job("x", F, finished=10, reason="something-new"), "static", now=20)
    assert counts(tr) == {("connection", "refresh", "bad"): 2, ("connection", "refresh", "user"): 1}


def test_a_job_still_running_past_its_latency_counts_bad_then_and_never_again() -> None:
    tr = tracker()
    tr.track("t", job("hung", R), "static", now=10)
    tr.sweep(now=300)
    assert counts(tr) == {}
    tr.sweep(now=301)
    assert counts(tr) == {("connection", "refresh", "bad"): 1}
    tr.sweep(now=400)
    tr.apply("t", PollResult(jobs=[job("hung", S, finished=500)]), now=500)
    assert counts(tr) == {("connection", "refresh", "bad"): 1}
    assert tr.targets["t"].jobs["hung"].slo_counted == ("refresh",)


def test_each_objective_judges_an_unfinished_job_at_its_own_latency() -> None:
    tr = tracker(SLO, {**SLO, "name": "quick", "latency": "1m"})
    tr.track("t", job("slow", R), "static", now=10)
    tr.sweep(now=61)
    assert counts(tr) == {("connection", "quick", "bad"): 1}
    tr.sweep(now=299)
    assert counts(tr) == {("connection", "quick", "bad"): 1}
    tr.sweep(now=301)
    assert counts(tr) == {("connection", "quick", "bad"): 1, ("connection", "refresh", "bad"): 1}


def test_the_latency_runs_from_the_creation_the_first_answer_gives() -> None:
    tr = tracker()
    tr.track("t", placeholder("late"), "registered", now=1000)
    tr.sweep(now=1001)
    assert counts(tr) == {}  # known by its id only: not judged
    tr.apply("t", PollResult(jobs=[job("late", R)]), now=1002)  # created at 0
    tr.sweep(now=1003)
    assert counts(tr) == {("connection", "refresh", "bad"): 1}


def test_a_sweep_reads_only_the_jobs_whose_latency_passed() -> None:
    tr = tracker()
    for i in range(1000):
        tr.track("t", Job(str(i), R, job_type="connection", created=i), "static", now=1)
    state = tr.targets["t"]
    tr.sweep(now=400)
    assert counts(tr) == {("connection", "refresh", "bad"): 100}  # created 0..99
    assert len(state.slo_deadlines.due) == 900 and min(state.slo_deadlines.due.values()) == 400
    tr.drop("t", "999", "deleted")
    assert "999" not in state.slo_deadlines.due


def test_a_job_waiting_for_its_end_user_when_the_latency_passes_is_the_users() -> None:
    tr = tracker()
    tr.track("t", job("mfa", R, awaiting_user=True), "static", now=10)
    tr.sweep(now=301)
    assert counts(tr) == {("connection", "refresh", "user"): 1}


def test_only_the_objectives_target_and_job_type_count() -> None:
    tr = tracker()
    tr.track("t", job("report", S, job_type="report", finished=1), "static", now=2)
    tr.track("other", job("elsewhere", S, finished=1), "static", now=2)
    assert counts(tr) == {} and counts(tr, "other") == {}


def test_a_regex_covers_several_targets_and_no_job_type_covers_every_type() -> None:
    tr = tracker({"name": "all", "target_regex": "t|oth.*", "objective": 0.9, "latency": "1m"})
    tr.track("t", job("a", S, job_type="report", finished=1), "static", now=2)
    tr.track("other", job("b", S, finished=100), "static", now=101)
    assert counts(tr) == {("report", "all", "good"): 1}
    assert counts(tr, "other") == {("connection", "all", "bad"): 1}


def test_history_is_not_judged() -> None:
    tr = tracker()
    tr.track("t", job("old", F, finished=1, reason="connector-error"), "discovered", now=10_000)
    tr.sweep(now=10_001)
    assert counts(tr) == {}


def test_a_rerun_under_the_same_id_is_judged_again() -> None:
    tr = tracker()
    tr.track("t", job("j", F, finished=10, reason="connector-error"), "static", now=20)
    tr.apply("t", PollResult(jobs=[job("j", R)]), now=30)
    tr.apply("t", PollResult(jobs=[job("j", S, finished=40)]), now=40)
    assert counts(tr) == {("connection", "refresh", "bad"): 1, ("connection", "refresh", "good"): 1}


def test_the_judgement_marks_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(str(path))
    tr = tracker(store=store)
    tr.track("t", job("hung", R), "static", now=10)
    tr.sweep(now=400)
    store.flush()
    assert counts(tr) == {("connection", "refresh", "bad"): 1}  # shown once the mark is committed
    store.close()

    store = Store(str(path))
    tr = tracker(store=store)
    assert tr.targets["t"].jobs["hung"].slo_counted == ("refresh",)
    tr.sweep(now=500)
    tr.apply("t", PollResult(jobs=[job("hung", S, finished=600)]), now=600)
    store.flush()
    assert counts(tr) == {}  # judged in the previous lifetime
    store.close()


def test_the_count_waits_for_the_mark_to_be_committed(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "state.db"))
    tr = tracker(store=store)
    tr.track("t", job("hung", R), "static", now=10)
    tr.sweep(now=400)
    assert counts(tr) == {}
    store.flush()
    assert counts(tr) == {("connection", "refresh", "bad"): 1}
    store.close()


def test_the_counter_shows_every_result_at_zero_before_the_first_job() -> None:
    tr = tracker()
    text = Exposition(tr, dict).render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.labels["target"], s.labels["job_type"], s.labels["slo"], s.labels["result"]): s.value
        for s in families["asyncjob_slo_jobs"].samples
    }
    assert samples == {
        ("t", "connection", "refresh", "good"): 0,
        ("t", "connection", "refresh", "bad"): 0,
        ("t", "connection", "refresh", "user"): 0,
    }
    assert families["asyncjob_slo_jobs"].type == "counter"


def test_the_counter_family_is_served_without_objectives_too() -> None:
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tr = Tracker()
    tr.set_target(s.resolved(s.targets[0]))
    text = Exposition(tr, dict).render().decode()
    assert "# TYPE asyncjob_slo_jobs_total counter\n" in text
    assert "asyncjob_slo_jobs_total{" not in text


@pytest.mark.parametrize(
    ("slo", "problem"),
    [
        ({**SLO, "target": "nope"}, 'no target matches target="nope"'),
        ({**SLO, "objective": 1}, "slos[0].objective"),
        ({**SLO, "latency": "soon"}, "slos[0].latency"),
        ({**SLO, "target_regex": "t"}, "exactly one of target and target_regex"),
        ({**SLO, "name": "Has Space"}, "slos[0].name"),
    ],
)
def test_a_bad_objective_is_refused_with_its_key_path(slo: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings(slo)
    assert problem in "\n".join(e.value.problems)


def test_an_objective_added_by_a_reload_judges_the_jobs_already_tracked() -> None:
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tr = Tracker()
    tr.set_target(s.resolved(s.targets[0]))
    tr.track("t", job("hung", R), "static", now=10)
    tr.sweep(now=400)
    assert counts(tr) == {}
    with_slo = settings()
    tr.set_target(with_slo.resolved(with_slo.targets[0]))
    tr.sweep(now=401)
    assert counts(tr) == {("connection", "refresh", "bad"): 1}


def test_check_config_lists_the_objectives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "asyncjob.yml"
    targets = [{"name": "t", "provider": "basiq", "base_url": "https://x", "jobs": ["1"]}]
    path.write_text(yaml.safe_dump({"targets": targets, "slos": [SLO]}))
    assert check_config(str(path)) == 0
    assert "slo refresh: 0.99 of connection jobs of t within 5m, over 28d" in capsys.readouterr().out


def test_two_objectives_of_one_name_are_refused() -> None:
    with pytest.raises(ConfigError) as e:
        settings(SLO, SLO)
    assert "duplicate SLO name 'refresh'" in "\n".join(e.value.problems)
