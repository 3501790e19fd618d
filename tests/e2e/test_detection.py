"""Precision and recall of the shipped alerts, end to end: a labelled fleet of ~230 jobs on every
provider of the simulator, the exporter with a state file killed (-9) and restarted halfway, a real
Prometheus with alerts/asyncjob.rules.yml and a real Alertmanager. The pages (alerts of severity
warning or critical, firing) are exactly those the labels call for: every one, and no other, with
the providers' documented edges among them (a Basiq user that no longer exists, the token
endpoint's two 403s, Oxlin connections closed or idle mid-sync, a lapsed consent on another
channel, an AIMS360 state no one documented, Basiq's list without jobType, an export API's
succeeded job with 12 % of its rows rejected) and a mass outage
(fifty failed exports on one WillSuite account, one page); once with
every job's series (`per_job_series: all`) and with only the series of the jobs that need a person
(`exceptions`). Nothing here is timed; bench/detection.py reports time to page from the same run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fleet
from tests.realstack import require_binaries

pytestmark = [pytest.mark.realstack, pytest.mark.e2e]


@pytest.mark.parametrize("per_job_series", ["all", "exceptions"])
def test_a_labelled_fleet_pages_exactly_where_an_operator_must_act(
    tmp_path: Path, per_job_series: str
) -> None:
    """The same pages whether every job has per-job series or only those that need a person."""
    binaries = require_binaries()
    seen = fleet.run(tmp_path, binaries, per_job_series=per_job_series)
    labels = {job.label for job in seen.fleet}
    assert {
        "healthy",
        "provider failure",
        "user failure",
        "stuck",
        "awaiting the user",
        "week-old history",
        "multi-channel sync",
        "rerun, then succeeded",
        "missed final event",
        "MFA expired",
        "connection closed",
        "nothing to synchronise",
        "lapsed consent on another channel",
        "undocumented state",
        "succeeded with failing records",
        "mass outage",
    } <= labels
    assert len(seen.fleet) >= 200

    pages = set(seen.pages)
    missed = seen.expected_pages - pages
    wrong = pages - seen.expected_pages
    by_key = {(job.target, job.key): job.label for job in seen.fleet}

    def explain(keys: set[tuple[str, str, str]]) -> str:
        return "\n".join(f"  {k} ({by_key.get(k[1:], 'aggregate')})" for k in sorted(keys))

    logs = "\n".join(
        f"--- {p.name} ---\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(tmp_path.glob("*.log"))
    )
    assert not missed, f"pages that should have fired and did not:\n{explain(missed)}\n{logs}"
    assert not wrong, f"pages for what no operator must act on:\n{explain(wrong)}\n{logs}"
    assert not seen.pending_pages, f"pages about to fire that should not:\n{explain(seen.pending_pages)}"

    # A success with failing records pages an operator when the records are not the end user's
    # (the generic export API's rejected rows), and only the application team when they are
    # (WillSuite's refused cases, an info alert: asserted with the infos below).
    failing = {(job.target, job.key) for job in seen.fleet if job.label == "succeeded with failing records"}
    records_pages = {page for page in pages if page[0] == "AsyncJobRecordsFailing"}
    assert records_pages == {
        ("AsyncJobRecordsFailing", fleet.GENERIC, key) for t, key in failing if t == fleet.GENERIC
    }
    assert records_pages, "no job of the fleet proves AsyncJobRecordsFailing"

    # The mass outage (one provider failing fifty jobs in a minute) paged once, by the failure rate.
    outage = {(job.target, job.key) for job in seen.fleet if job.label == "mass outage"}
    assert len(outage) == fleet.MASS_OUTAGE
    about_outage = {
        page for page in pages if page[1:] in outage or page[1:] == (fleet.WILL_OUTAGE, fleet.WILL_EXPORT)
    }
    assert about_outage == {("AsyncJobFailureRateHigh", fleet.WILL_OUTAGE, fleet.WILL_EXPORT)}

    # Outcomes were counted once across the kill -9, and week-old history not at all.
    assert seen.counted_before == seen.expected_counts(after_restart=False)
    assert seen.counted_after == seen.expected_counts(after_restart=True)

    # Basiq's token endpoint: a disabled account is bad credentials, its rate limit a rate limit.
    for target, reason in fleet.REFUSALS.items():
        other = "http_429" if reason == "auth" else "auth"
        assert seen.poll_errors[(target, reason)] > 0, (target, seen.poll_errors)
        assert seen.poll_errors[(target, other)] == 0, (target, seen.poll_errors)
    # A Basiq user that does not exist is counted as such, and takes nothing else down.
    assert seen.poll_errors[(fleet.BASIQ, "not_found")] > 0

    # What only the end user can fix reached the application team's alerts, not an operator's.
    infos = set(seen.infos)
    assert fleet.expected_infos(seen.fleet) <= infos, explain(fleet.expected_infos(seen.fleet) - infos)
