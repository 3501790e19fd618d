"""The cluster's section of docs/benchmarks.md and its summary rows, from bench/cluster.py's
results: the figures of both modes side by side, the statements PostgreSQL received, and
1,000,000 live jobs on paper (what was measured and what is assumed, said apart)."""

from __future__ import annotations

from typing import Any

from bench.cluster import CPU_MAX_RATIO, REGISTRATION_P99_MS, REGISTRATIONS_MIN_RATIO


def _per_cycle(s: dict[str, Any], n: int) -> float:
    """Statements of the steady window per poll cycle (n polls: every job once)."""
    return float(s["statements"]["calls"]) / max(float(s["polls"]) / n, 1e-9)


def _kill_target_s(k: dict[str, Any]) -> float:
    """Issue 22's bound: polled again within the lease TTL and two poll intervals."""
    return float(k["lease_ttl_s"]) + 2 * float(k["poll_interval_s"])


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    from bench.report import row

    one, many, n = r["sqlite"], r["cluster"], r["jobs"]
    procs = many["processes"]
    cpu, base = many["steady"]["cpu_ms_per_poll"], one["steady"]["cpu_ms_per_poll"]
    reg, reg_base = many["registrations"], one["registrations"]
    first = many["first_full_poll_statements"]
    per_cycle = _per_cycle(many["steady"], n)
    rows_a_statement = first["job_rows_written"] / max(first["job_write_calls"], 1)
    top = many["steady"]["statements"]["top"]
    most = float(top[0]["calls"]) / max(many["steady"]["polls"], 1) if top else 0.0
    # Batched: no statement is sent anywhere near once a poll (a hundredth of one at most), and a
    # statement that writes jobs writes many of them (ten rows or more, on average).
    batched = most <= 0.01 and rows_a_statement >= 10
    k = many["kill"]
    return [
        row(
            f"CPU a poll, {procs} replicas polling {n:,} jobs (PostgreSQL's beside it)",
            f"{cpu:.3f} ms (+ PostgreSQL {many['steady']['postgres_cpu_ms_per_poll']:.3f} ms)",
            f"one SQLite process {base:.3f} ms",
            f"{cpu / base:.2f}x",
            f"<= {CPU_MAX_RATIO}x",
            cpu / base <= CPU_MAX_RATIO,
        ),
        row(
            f"registrations/s at concurrency {r['concurrency']} over {procs} replicas, 202 after commit",
            f"{reg['per_second']:,.0f}/s",
            f"one SQLite process {reg_base['per_second']:,.0f}/s",
            f"{reg['per_second'] / reg_base['per_second']:.2f}x",
            f">= {REGISTRATIONS_MIN_RATIO}x",
            reg["per_second"] / reg_base["per_second"] >= REGISTRATIONS_MIN_RATIO,
        ),
        row(
            f"registration p99 over {procs} replicas",
            f"{reg['p99_ms']:.0f} ms",
            f"one SQLite process {reg_base['p99_ms']:.0f} ms",
            "",
            f"<= {REGISTRATION_P99_MS:g} ms",
            reg["p99_ms"] <= REGISTRATION_P99_MS,
        ),
        row(
            "kill -9 of a replica to every one of its jobs polled again",
            f"{k['polled_again_s']:.1f} s (shards taken over after {k['taken_over_s']:.1f} s)",
            f"lease_ttl {k['lease_ttl_s']:g} s, poll interval {k['poll_interval_s']:g} s",
            "",
            f"<= {_kill_target_s(k):g} s",
            k["polled_again_s"] <= _kill_target_s(k),
        ),
        row(
            "PostgreSQL statements a poll cycle (batched, not one a job)",
            f"{per_cycle:,.0f} a cycle, the most sent {most:.4f} a poll; first full poll:"
            f" {first['job_rows_written']:,} job rows in {first['job_write_calls']:,} statements",
            f"{n:,} polls a cycle",
            f"{rows_a_statement:,.0f} rows a statement",
            "<= 0.01 a poll; >= 10 rows a statement",
            batched,
        ),
    ]


def _statements_table(s: dict[str, Any], per: float, unit: str) -> list[str]:
    from bench.report import _table

    return _table(
        ["statement", f"calls {unit}", f"rows {unit}"],
        [
            [f"`{x['query'][:90]}`", f"{x['calls'] / per:,.1f}", f"{x['rows'] / per:,.1f}"]
            for x in s["top"][:8]
        ],
    )


def body(r: dict[str, Any]) -> list[str]:
    from bench.report import _table

    one, many, n = r["sqlite"], r["cluster"], r["jobs"]
    procs, k = many["processes"], many["kill"]
    steady, reg = many["steady"], many["registrations"]
    cycles = steady["polls"] / n
    lines = [
        f"## Cluster mode: {procs} replicas sharing PostgreSQL, beside one SQLite process",
        "",
        f"`bench/cluster.py`. The same {n:,} running Basiq jobs of one simulator (a static list of",
        f"every id), polled every {r['poll_interval_s']:g} s, first by one CLI process with a state file,",
        f"then by {procs} CLI processes sharing Debian's PostgreSQL (`{many.get('postgres_settings', '')}`,",
        "on loopback, its data on the same disk), `lease_ttl` "
        f"{k['lease_ttl_s']:g} s, `per_job_series: exceptions` (what `auto` serves past 10,000 jobs).",
        "CPU is read from /proc (user + system) for the exporter processes; PostgreSQL's (the",
        "postmaster, every backend and the connections it reaped) is counted beside it, not in it.",
        "The first full poll runs from the processes' start until their `/metrics` together count",
        "every job answered (and, in the cluster, every one of the 256 shards held).",
        "CPU a poll: two poll intervals once every job was answered (no job changes then: what a",
        "poll costs when nothing moves). Registrations: raw keep-alive connections, spread over the",
        f"replicas in turn, {reg['seconds']:.0f} s each mode; the ids are unknown to the simulator, so each is",
        "polled once and dropped as gone.",
        "",
    ]
    rows = []
    for label, m in (("one process, SQLite state file", one), (f"{procs} replicas, PostgreSQL", many)):
        s, g = m["steady"], m["registrations"]
        pg_poll = f" + {s['postgres_cpu_ms_per_poll']:.3f}" if "postgres_cpu_ms_per_poll" in s else ""
        pg_reg = (
            f" + {g['postgres_cpu_us_per_registration']:,.0f}"
            if "postgres_cpu_us_per_registration" in g
            else ""
        )
        rss = ", ".join(f"{b / 2**20:.0f}" for b in m["rss_bytes"])
        rows.append(
            [
                label,
                f"{m['first_full_poll_s']:.1f} s",
                f"{s['cpu_ms_per_poll']:.3f}{pg_poll}",
                f"{g['per_second']:,.0f}",
                f"{g['p50_ms']:.1f} / {g['p99_ms']:.1f} / {g['max_ms']:.0f}",
                f"{g['cpu_us_per_registration']:,.0f}{pg_reg}",
                rss,
                f"{s['load_average']}",
            ]
        )
    lines += _table(
        [
            "mode",
            "first full poll",
            "CPU a poll (ms; + PostgreSQL)",
            "registrations/s",
            "p50 / p99 / max (ms)",
            "CPU a registration (µs; + PostgreSQL)",
            "RSS (MiB)",
            "load average",
        ],
        rows,
    )
    first = many["first_full_poll_statements"]
    lines += [
        "",
        f"`kill -9` of a replica that worked {k['victim_jobs']:,.0f} jobs: the others held its shards",
        f"{k['taken_over_s']:.1f} s later and had polled every one of its jobs {k['polled_again_s']:.1f} s after",
        f"the kill (`lease_ttl` {k['lease_ttl_s']:g} s; the jobs taken in wait for the next full cycle,",
        f"up to one poll interval of {k['poll_interval_s']:g} s, and that cycle's own length). Read from the",
        "survivors' logs: the end of the first poll cycle that began after their last shards were taken in.",
        "",
        "The replicas' warnings and errors over the run, by message: "
        + ("; ".join(f"{msg} ({count:,})" for msg, count in many.get("log_warnings", {}).items()) or "none")
        + " (the registered ids are unknown to the simulator: each is dropped once, in both modes).",
        "",
        "PostgreSQL's statements (pg_stat_statements) from the start until every job was answered once",
        "(each job written as it was first tracked, a placeholder, then with its first answer):",
        f"{first['calls']:,} statements, {first['commits']:,} transactions,",
        f"{first['job_rows_written']:,} job rows in {first['job_write_calls']:,} statements. In the steady window",
        f"({cycles:.2f} poll cycles, no job changing): {_per_cycle(steady, n):,.0f} statements a cycle, none",
        "of them a job's: lease renewals, heartbeats and catch-up reads, whatever the number of jobs.",
        "",
        *_statements_table(steady["statements"], cycles, "a cycle"),
        "",
        f"During the registrations ({reg['requests']:,}): {reg['statements']['commits']:,} transactions"
        " (pg_stat_database: the catch-up reads, each in a transaction of its own, included),"
        f" {reg['statements']['calls'] / max(reg['requests'], 1):.1f} statements a registration.",
        "",
        *_statements_table(reg["statements"], reg["requests"] / 1000, "a 1,000 registrations"),
        "",
        *projection(r),
    ]
    return lines


def projection(r: dict[str, Any]) -> list[str]:
    """1M live jobs on paper, from this run's figures; what is measured and what is assumed said."""
    many, n = r["cluster"], r["jobs"]
    steady, reg, k = many["steady"], many["registrations"], many["kill"]
    procs, interval = many["processes"], float(r["poll_interval_s"])
    jobs, per_replica, lifetime_h, changes = 1_000_000, 50_000, 1.0, 5
    replicas = jobs // per_replica
    polls_per_s = jobs / interval
    cores = polls_per_s * steady["cpu_ms_per_poll"] / 1000
    rss_per_job = k.get("survivors_rss_growth_bytes", 0) / max(k["victim_jobs"], 1)
    series = max(many["series"])
    first = many["first_full_poll_statements"]
    pg_row_us = many.get("first_full_poll_postgres_cpu_s", 0.0) / max(first["job_rows_written"], 1) * 1e6
    rows_a_statement = first["job_rows_written"] / max(first["job_write_calls"], 1)
    # PostgreSQL's steady work (lease rounds, heartbeats, catch-up reads) grows with replicas and
    # time, not with jobs: its CPU a replica-second, and its statements a replica-second.
    pg_replica_core = steady["postgres_cpu_s"] / steady["seconds"] / procs
    statements_replica_s = steady["statements"]["calls"] / steady["seconds"] / procs
    arrivals = jobs / (lifetime_h * 3600)  # Little's law
    rows_per_s = arrivals * (2 + changes)  # the registration, its changes, its removal
    pg_cores = replicas * pg_replica_core + rows_per_s * pg_row_us / 1e6
    pg_cores += arrivals * reg["postgres_cpu_us_per_registration"] / 1e6
    return [
        "### On paper: 1,000,000 live jobs",
        "",
        "Measured in this run, on this machine:",
        "",
        f"- {steady['cpu_ms_per_poll']:.3f} ms of a replica's CPU a poll when nothing changes;",
        f"  {rss_per_job / 1024:.1f} KiB of a replica's RSS a job (the survivors' growth with the dead"
        " replica's jobs);",
        f"  {series:,.0f} series a replica of about {n // procs:,} jobs in `exceptions` mode;",
        f"- PostgreSQL's background: {pg_replica_core * 1000:.0f} ms of CPU a second and"
        f" {statements_replica_s:.1f} statements a second a replica, whatever its jobs;",
        f"- job rows: {first['job_rows_written']:,} written in {first['job_write_calls']:,} statements"
        f" ({rows_a_statement:,.0f} rows a statement), {pg_row_us:,.0f} µs of PostgreSQL's CPU a row"
        " (loads and leases of the start included);",
        f"- a registration: {reg['cpu_us_per_registration']:,.0f} µs of the replicas' CPU and"
        f" {reg['postgres_cpu_us_per_registration']:,.0f} µs of PostgreSQL's;"
        f" {reg['per_second']:,.0f} a second over {procs} replicas on this machine.",
        "",
        f"Assumed: a {interval:g} s poll interval, jobs living {lifetime_h:g} h with {changes} changes each"
        f" (so {arrivals:,.0f} registrations a second, by Little's law), {per_replica:,} jobs a replica.",
        "Projected from the two (a straight line: nothing here was run at that size):",
        "",
        f"- Replicas: {jobs:,} jobs / {interval:g} s = {polls_per_s:,.0f} polls a second, {cores:.1f} cores of"
        f" polling; {replicas} replicas of {per_replica:,} jobs, {cores / replicas:.2f} core and"
        f" {per_replica * rss_per_job / 2**20:,.0f} MiB of jobs each (plus the process itself, about"
        f" {min(many['rss_bytes']) / 2**20 - (n / procs) * rss_per_job / 2**20:,.0f} MiB here).",
        f"- PostgreSQL writes: {rows_per_s:,.0f} job rows a second (each job's registration, {changes} changes"
        f" and removal), about {rows_per_s / rows_a_statement:,.0f} job-writing statements a second at this"
        f" run's batching, beside {replicas * statements_replica_s:,.0f} statements a second of leases,"
        f" heartbeats and catch-up reads; about {pg_cores:.1f} cores of PostgreSQL's CPU for all of it.",
        f"- Series a replica: about {series:,.0f} in `exceptions` mode, which `auto` serves past 10,000"
        f" jobs a target (aggregates, and only the jobs that need a person); `all` would add"
        f" {per_replica:,} jobs times the per-job series of the series section above.",
        f"- Registrations: {arrivals:,.0f} a second needed, {arrivals * reg['cpu_us_per_registration'] / 1e6:.2f}"
        " core of the replicas' CPU at the measured cost.",
    ]
