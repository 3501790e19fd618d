"""docs/benchmarks.md from one run's results: the summary against the targets, then a section per
benchmark. To add one: write its `body` (markdown lines) and `targets` (summary rows) and append a
`Section` to SECTIONS; a section whose results are missing from a run is left out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import auth, cluster_report, detection, lockout, pgdriver, series
from bench.scraper import latency_cell

KIB = 1024

# Targets (issue "Fast while it polls"), each checked against a figure of the same run.
SCRAPE_P99_MS = 20.0  # /metrics at 10k jobs, every job changing each cycle
STALL_P99_MS, STALL_MAX_MS = 50.0, 100.0  # /healthz and /metrics while polling 10k jobs
STALL_MAX_MS_50K = 250.0
BODY_MAX_AGE_S = 1.0
MEMORY_MAX_BYTES_PER_JOB = 4 * KIB
CHANGE_MAX_RATIO = 1.5  # cost per change at 100k jobs over 1k: "the same", within noise
POLL_MAX_RATIO = 0.5  # CPU per poll against a bare httpx.AsyncClient
FIRST_POLL_MAX_S = 6.0  # every one of 10k jobs answered once
DETECTION_SLACK_S = 1.0
REGISTRATIONS_MIN_PER_S, REGISTRATIONS_MIN_RATIO, REGISTRATION_P99_MS = 1000.0, 0.5, 100.0
REGISTRATION_SCRAPE_P99_MS = 50.0

Row = dict[str, Any]


@dataclass(frozen=True)
class Section:
    key: str  # the benchmark's key in the results
    body: Callable[[Any], list[str]]
    targets: Callable[[Any], list[Row]]


def row(what: str, measured: str, baseline: str, ratio: str, target: str, met: bool) -> Row:
    return {
        "what": what,
        "measured": measured,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def _ok(met: bool) -> str:
    return "met" if met else "**MISSED**"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _code(text: str) -> list[str]:
    return ["```", text.rstrip(), "```"]


# --- 1. scrape under churn ------------------------------------------------------------------


def scrape_targets(s: dict[str, Any]) -> list[Row]:
    m, h, b, n = s["metrics"], s["healthz"], s["baseline"], f"{s['jobs']:,}"
    whole, gen = b["gzip_whole_body_ms"], b["generate_latest_gzip_ms"]
    return [
        row(
            f"/metrics p99, {n} jobs, every job changing each cycle, while polling",
            f"{m['p99_ms']:.1f} ms",
            f"gzip of the whole body {whole:.0f} ms; prometheus-client {gen:,.0f} ms",
            f"{whole / m['p99_ms']:.1f}x / {gen / m['p99_ms']:,.0f}x faster",
            f"<= {SCRAPE_P99_MS:g} ms",
            m["p99_ms"] <= SCRAPE_P99_MS,
        ),
        row(
            f"/metrics and /healthz p99 / max, {n} jobs, churn, while polling",
            f"{max(m['p99_ms'], h['p99_ms']):.1f} / {max(m['max_ms'], h['max_ms']):.0f} ms",
            f"gzip of the whole body {whole:.0f} ms",
            "",
            f"<= {STALL_P99_MS:g} / {STALL_MAX_MS:g} ms",
            max(m["p99_ms"], h["p99_ms"]) <= STALL_P99_MS and max(m["max_ms"], h["max_ms"]) <= STALL_MAX_MS,
        ),
        row(
            "age of the served body (oldest change it lacks), max",
            f"{s['staleness']['max_ms'] / 1000:.2f} s",
            f"poll interval {s['poll_interval_s']:g} s",
            "",
            f"<= {BODY_MAX_AGE_S:g} s",
            s["staleness"]["max_ms"] / 1000 <= BODY_MAX_AGE_S,
        ),
        row(
            f"served body current after every one of {n} jobs changed, max",
            f"{s['current_after']['max_ms'] / 1000:.2f} s",
            f"poll interval {s['poll_interval_s']:g} s",
            "",
            f"<= {BODY_MAX_AGE_S:g} s",
            s["current_after"]["max_ms"] / 1000 <= BODY_MAX_AGE_S,
        ),
    ]


def scrape_body(s: dict[str, Any]) -> list[str]:
    b, served = s["baseline"], s["served"]
    return [
        f"## Scrape under churn: {s['jobs']:,} jobs, {s['series_per_job']} series each",
        "",
        f"A `Runtime` in the benchmark's process polls {s['jobs']:,} running Basiq jobs of the simulator",
        f"(its own process) every {s['poll_interval_s']:g} s with its real scheduler",
        f"({s['polls_per_s']:,.0f} polls a second during the window). Every job also changes once a cycle:",
        f"its progress is moved through `Tracker.update`, {s.get('churn_slice', 200)} jobs a loop turn (as many as the",
        f"scheduler folds poll answers into the tracker a turn; {s['churn_pass_s'] * 1000:.0f} ms a pass), and the",
        "poll that follows answers the simulator's state, a change again. A scraper in a",
        "third process (`bench/scraper.py`) asks for `/metrics` with Prometheus' headers (gzip) and",
        "`/healthz` in turn, ten pairs a second. Every client gets the same body: one gzip member.",
        f"During the window the exporter's process used {s.get('cpu_share', 0) * 100:.0f} % of a CPU; the load",
        f"average was {s.get('load_average', 'unknown')}. When polls and changes ask for more CPU than the process",
        "gets, changes wait to be rendered and the served body ages: the age and currency rows show it.",
        "",
        *_table(
            ["figure", "p50 / p99 / max", "samples"],
            [
                ["`/metrics`, gzip", latency_cell(s["metrics"]), str(s["metrics"]["n"])],
                ["`/healthz`", latency_cell(s["healthz"]), str(s["healthz"]["n"])],
                [
                    "the body itself: `Exposition.render(gz=True)` as the server calls it, on the loop",
                    latency_cell(s["render"]),
                    str(s["render"]["n"]),
                ],
                [
                    _gc_row(s),
                    latency_cell(s["gc_full"]) if s["gc_full"]["n"] else "none",
                    str(s["gc_full"]["n"]),
                ],
                [
                    "age of the served body: since the oldest change it lacks (sampled every 20 ms)",
                    latency_cell(s["staleness"]),
                    str(s["staleness"]["n"]),
                ],
                [
                    "after every job changed (the pass's last change), until the served body holds all",
                    latency_cell(s["current_after"]),
                    str(s["current_after"]["n"]),
                ],
            ],
        ),
        "",
        "Baselines, the same body, measured in the same run in a worker thread while the scheduler",
        "kept polling:",
        "",
        *_table(
            ["baseline, per scrape", "time"],
            [
                [
                    "gzip (level 1) of the whole plain body, as a server compressing each scrape",
                    f"{b['gzip_whole_body_ms']:.0f} ms",
                ],
                [
                    "prometheus-client `generate_latest` over labelled Gauges holding the same samples",
                    f"{b['generate_latest_ms']:,.0f} ms",
                ],
                [
                    "... plus its `gzip.compress` (level 9, as its ASGI app does)",
                    f"{b['generate_latest_gzip_ms']:,.0f} ms",
                ],
            ],
        ),
        "",
        *_scrape_note(s),
        f"Served body checked: {s['body_bytes']:,} bytes of gzip read by Python's `gzip` module (CRC-32 and",
        f"size checked) to {served['plain_bytes']:,} bytes of {served.get('format', 'text 0.0.4')} (what Prometheus' "
        f"Accept header gets), parsed by prometheus-client's parser of that format: {served['samples']:,}",
        f"samples, {served['per_job_samples']:,} per job, {served['families']} families each under one `# TYPE`.",
    ]


def _gc_row(s: dict[str, Any]) -> str:
    if "gc_full_passes" not in s:
        return "full collections of Python's cyclic GC (the whole process stops)"
    return (
        "generation-2 collections of Python's cyclic GC (the whole process stops): the exporter's, "
        f"every {s['gc_tick_s']:g} s over what was made since, and {s['gc_full_passes']} full "
        "pass(es) over every object"
    )


def _gc_note(s: dict[str, Any]) -> list[str]:
    g = s["gc_full"]
    if not g["n"]:
        return []
    if "gc_full_passes" not in s:
        return [
            f"Python's full GC collections ran {g['n']} times in the window, up to",
            f"{g['max_ms']:.0f} ms each, the whole process stopped: they walk every tracked",
            "object, so they grow with the number of jobs.",
        ]
    return [
        f"Python's cyclic GC stopped the whole process {g['n']} times in the window, up to {g['max_ms']:.0f} ms:",
        f"{s['gc_full_passes']} full pass(es) over every tracked object (they grow with the number of jobs),",
        f"the rest the exporter's ticks every {s['gc_tick_s']:g} s over what was made since the last one.",
    ]


def _scrape_note(s: dict[str, Any]) -> list[str]:
    m, h, own = s["metrics"], s["healthz"], s["render"]
    if m["p99_ms"] <= SCRAPE_P99_MS:
        return []
    return [
        f"Where a scrape's time goes: building the body takes {own['p50_ms']:.1f} ms (max {own['max_ms']:.0f} ms);",
        f"`/healthz`, which builds nothing, waits {h['p99_ms']:.0f} ms at p99 against {m['p99_ms']:.0f} ms for",
        "`/metrics`: the rest is waiting for the event loop (poll answers, changes, rendering take turns)",
        "and for a CPU.",
        *_gc_note(s),
        "",
    ]


# --- 2. cost per change ---------------------------------------------------------------------


def changes_targets(c: dict[str, Any]) -> list[Row]:
    rows = []
    for op in ("add", "update", "drop"):
        key = f"{op}_rendered_us"
        small, large = c["small"][key], c["large"][key]
        rows.append(
            row(
                f"{op} a job, at {c['large']['jobs']:,} jobs (rendering included)",
                f"{large:.1f} µs",
                f"at {c['small']['jobs']:,} jobs {small:.1f} µs",
                f"{large / small:.2f}x",
                f"<= {CHANGE_MAX_RATIO:g}x",
                large / small <= CHANGE_MAX_RATIO,
            )
        )
    return rows


def changes_body(c: dict[str, Any]) -> list[str]:
    sm, lg = c["small"], c["large"]

    def line(label: str, key: str) -> list[str]:
        return [label, f"{sm[key]:.1f} µs", f"{lg[key]:.1f} µs", f"{lg[key] / sm[key]:.2f}x"]

    return [
        "## Cost per change: adding, updating and dropping a job",
        "",
        "`Tracker` with the exposition listening, synthetic Basiq jobs, no network (`bench/changes.py`).",
        f"Each operation is timed over {c['batch']} jobs that fill (or are) whole groups, the same at",
        "both sizes, median of 7 batches; the second figure adds rendering the dirty groups again.",
        "A new job finds a group with room, and a job its group, through dicts; a drop looks at no",
        "other job.",
        "",
        *_table(
            ["per job", f"{sm['jobs']:,} jobs", f"{lg['jobs']:,} jobs", "ratio"],
            [
                line("add", "add_us"),
                line("add, dirty groups rendered", "add_rendered_us"),
                line("update", "update_us"),
                line("update, dirty groups rendered", "update_rendered_us"),
                line("drop", "drop_us"),
                line("drop, dirty groups rendered", "drop_rendered_us"),
            ],
        ),
        "",
        "What grows with the fleet is the assembly of the served body, once per half second at most",
        "while jobs change, in a worker thread, and only for the families whose blocks changed:",
        f"{sm['assemble_ms']:.1f} ms at {sm['jobs']:,} jobs, {lg['assemble_ms']:.0f} ms at {lg['jobs']:,}",
        "after such a batch.",
    ]


# --- 3. memory and latency while polling ----------------------------------------------------


def memory_targets(mem: dict[str, Any]) -> list[Row]:
    rows = []
    extra = mem["history"]["extra_bytes"]
    for m in mem["sizes"]:
        if "bytes_per_job" in m:
            per = m["bytes_per_job"] + extra
            rows.append(
                row(
                    f"RSS per job while polling, {m['from_jobs']:,} to {m['jobs']:,} jobs, with a full history",
                    f"{per / KIB:.2f} KiB",
                    f"measured {m['bytes_per_job'] / KIB:.2f} KiB + {extra:,} B of history",
                    f"{per / MEMORY_MAX_BYTES_PER_JOB:.2f}x the target",
                    "<= 4 KiB",
                    per <= MEMORY_MAX_BYTES_PER_JOB,
                )
            )
        worst = max(m["metrics"]["max_ms"], m["healthz"]["max_ms"])
        p99 = max(m["metrics"]["p99_ms"], m["healthz"]["p99_ms"])
        if m["jobs"] >= 50_000:
            rows.append(
                row(
                    f"/metrics and /healthz max while polling {m['jobs']:,} jobs",
                    f"{worst:.0f} ms",
                    "",
                    "",
                    f"<= {STALL_MAX_MS_50K:g} ms",
                    worst <= STALL_MAX_MS_50K,
                )
            )
        elif m["jobs"] >= 10_000:
            rows.append(
                row(
                    f"/metrics and /healthz p99 / max while polling {m['jobs']:,} jobs",
                    f"{p99:.1f} / {worst:.0f} ms",
                    "",
                    "",
                    f"<= {STALL_P99_MS:g} / {STALL_MAX_MS:g} ms",
                    p99 <= STALL_P99_MS and worst <= STALL_MAX_MS,
                )
            )
            rows.append(
                row(
                    f"every one of {m['jobs']:,} jobs answered once, from the exporter's start",
                    f"{m['all_answered_s']:.1f} s",
                    f"poll interval {mem['poll_interval_s']:g} s",
                    "",
                    f"<= {FIRST_POLL_MAX_S:g} s",
                    m["all_answered_s"] <= FIRST_POLL_MAX_S,
                )
            )
    return rows


def memory_body(mem: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{m['jobs']:,}",
            f"{m['all_answered_s']:.1f} s",
            f"{m['rss_bytes'] / KIB / KIB:.1f} MiB",
            f"{m['bytes_per_job'] / KIB:.2f} KiB" if "bytes_per_job" in m else "",
            latency_cell(m["metrics"]),
            latency_cell(m["healthz"]),
            f"{m['body_bytes'] / KIB:,.0f} KiB",
        ]
        for m in mem["sizes"]
    ]
    return [
        "## Memory and latency while polling",
        "",
        "The real CLI (`python -m exporter --config.file=…`) polls N running Basiq jobs of the simulator,",
        f"each in its own process, every {mem['poll_interval_s']:g} s (`bench/memory.py`, `bench/fleet.py`).",
        "Once every job was answered, and two intervals more, a scraper in a third process asks for",
        f"`/metrics` (gzip) and `/healthz` for {mem['seconds']:g} s while the exporter's VmRSS is read every",
        "0.5 s (median kept). Memory per job is the RSS growth from the size before, everything running:",
        "tracker, exposition, scheduler, HTTP pool, and the history each job holds.",
        "",
        f"The jobs here stay at their first step, so each history holds {mem['history']['entries_first']}",
        f"transitions; a full one holds {mem['history']['entries_full']}. The summary adds what the",
        f"difference holds ({mem['history']['extra_bytes']:,} B: "
        f"{mem['history']['bytes_per_transition']:.0f} B a transition, packed), measured with",
        "`exporter.history.observe` in this process.",
        "",
        *_table(
            [
                "jobs",
                "all answered after",
                "RSS",
                "per job (growth)",
                "/metrics p50 / p99 / max",
                "/healthz p50 / p99 / max",
                "gzip body",
            ],
            rows,
        ),
    ]


# --- 4. poll ----------------------------------------------------------------------------------


def poll_targets(p: dict[str, Any]) -> list[Row]:
    return [
        row(
            f"poll CPU per job ({p['jobs']:,} jobs, concurrency {p['concurrency']})",
            f"{p['ours_cpu_ms_per_poll']:.2f} ms",
            f"bare httpx GET + json.loads {p['bare_cpu_ms_per_poll']:.2f} ms",
            f"{p['ratio']:.2f}x",
            f"<= {POLL_MAX_RATIO:g}x",
            p["ratio"] <= POLL_MAX_RATIO,
        ),
        *(
            [
                row(
                    f"first full poll of {f['jobs']:,} jobs (one scheduler cycle, cold client)",
                    f"{f['ours_wall_s']:.1f} s, {f['ours_cpu_ms_per_poll']:.2f} ms CPU a poll",
                    f"bare httpx first pass {f['bare_wall_s']:.1f} s",
                    f"{f['ours_wall_s'] / f['bare_wall_s']:.2f}x",
                    f"<= {FIRST_POLL_MAX_S:g} s",
                    f["ours_wall_s"] <= FIRST_POLL_MAX_S,
                )
            ]
            if (f := p.get("first_full_poll"))
            else []
        ),
    ]


def poll_body(p: dict[str, Any]) -> list[str]:
    sn = p["sniffio"]
    return [
        "## Poll: CPU per job poll",
        "",
        f"Simulator in its own process (`python -m exporter simulate`), {p['jobs']:,} Basiq jobs created",
        "through `/_sim/jobs`. CPU is `time.process_time()` of the client process only, median of",
        f"{p['rounds']} rounds, the two sides alternating. Ours: `TargetHttp` (Basiq token auth, limiter,",
        "capped read) + `Basiq.poll` + `Tracker.apply` with the exposition listening, every job a change",
        "(placeholder to first answer) and so re-rendered. Baseline: `httpx.AsyncClient.get` +",
        f"`json.loads`, the same token, at the same concurrency ({p['concurrency']}).",
        "",
        *_table(
            ["", "CPU per job poll", f"wall per {p['jobs']:,} polls"],
            [
                [
                    "bare httpx + json.loads",
                    f"{p['bare_cpu_ms_per_poll']:.3f} ms",
                    f"{p['bare_wall_s']:.2f} s",
                ],
                ["exporter's poll path", f"{p['ours_cpu_ms_per_poll']:.3f} ms", f"{p['ours_wall_s']:.2f} s"],
                ["of which `Tracker.apply` + re-render", f"{p['apply_render_cpu_ms_per_job']:.3f} ms", ""],
                ["ratio", f"{p['ratio']:.2f}x", ""],
            ],
        ),
        "",
        *_first_full_poll(p.get("first_full_poll")),
        *TRANSPORT,
        f"sniffio: {'installed ' + sn['version'] if sn['installed'] else 'NOT installed'}, "
        f"{'declared' if sn['declared_in_pyproject'] else 'NOT declared'} in pyproject.toml's dependencies "
        "(httpcore imports it lazily on every request; without it each request pays a failed import).",
    ]


def _first_full_poll(f: dict[str, Any] | None) -> list[str]:
    if not f:
        return []
    return [
        f"### First full poll of {f['jobs']:,} jobs",
        "",
        f"A simulator of its own holding {f['jobs']:,} running Basiq jobs never asked about; the tracker",
        "holds them as placeholders (as static ids at start); one `Scheduler._cycle` over all of them,",
        "from a cold client (token, connections), timed whole: requests, parsing, tracker, re-render.",
        f"Then a bare `httpx.AsyncClient` reads the same jobs once at the same concurrency ({f['concurrency']}).",
        "CPU is the client process's own; the wall time also waits for the simulator's process, and",
        "for both to get a CPU on a machine shared with other work (see the load average above).",
        *(
            [
                f"The simulator spent {f['simulator_cpu_ms_per_poll']:.3f} ms of CPU per answer in the same cycle;",
                f"the client {f['ours_cpu_ms_per_poll']:.3f} ms: the cycle's floor on two free CPUs is about",
                f"{max(f['simulator_cpu_ms_per_poll'], f['ours_cpu_ms_per_poll']) * f['jobs'] / 1000:.1f} s.",
            ]
            if f.get("simulator_cpu_ms_per_poll")
            else []
        ),
        "",
        *_table(
            ["", "wall", "CPU per poll"],
            [
                [
                    "exporter: one scheduler cycle",
                    f"{f['ours_wall_s']:.1f} s",
                    f"{f['ours_cpu_ms_per_poll']:.3f} ms",
                ],
                [
                    "bare httpx + json.loads",
                    f"{f['bare_wall_s']:.1f} s",
                    f"{f['bare_cpu_ms_per_poll']:.3f} ms",
                ],
            ],
        ),
        "",
    ]


TRANSPORT = [
    "### Why a transport of our own",
    "",
    "cProfile of 1,000 polls through a bare `httpx.AsyncClient` (httpcore 1.0.9, concurrency 16; one",
    "run on this machine): 25 % of the time in httpcore's pool (`_assign_requests_to_connections`, which",
    "asks every connection `has_expired`/`is_idle` at each request: 276,000 `is_idle` calls for 1,000",
    "requests) and 9 % in anyio's `extra_attributes`, which `is_socket_readable` builds afresh (with a",
    "`getpeername` call) for every connection looked at. httpx stays the client API: its `Request` and",
    "`Response`, its auth flows (driven as `AsyncClient` drives them), timeouts and headers. Requests go",
    "straight to the target's transport, without the client's redirect, cookie and hook steps, which",
    "the exporter does not use (redirects are not followed, no provider sets cookies) and which cost",
    "more than the exchange; a plain path is joined to the target's base URL parsed once. Under it",
    "`exporter/transport.py` keeps idle HTTP/1.1 connections",
    "per origin in a stack (most recent first, expired after 4 s, one `poll()` before reuse); on each,",
    "`exporter/http11.py` writes the request in one send and parses the answer's head and body (Content-Length, chunked, until",
    "close) from a per-connection buffer over anyio streams: no pool scan, no h11 state machine (h11",
    "driving the same exchange took 40 µs a request on this machine), but h11's grammar, to the byte:",
    "`tests/unit/test_transport_h11.py` drives both over generated answers arriving in generated pieces",
    "and they agree on every answer, refusal and reuse. TLS",
    "is anyio's with httpx's default context (same verification); proxies from the environment are",
    "not used (as with any httpx client given its own transport). Decoding is ours too, bounded by `max_response_bytes` (zlib",
    "`max_length`), and answers in flight share one byte budget per target. In the profile of ours, the",
    "largest item is the socket `send` (where the kernel hands the CPU to the simulator's process),",
    "then building httpx's `Request` (headers) and `Response`. HTTP/2 was not taken: none of the",
    "four providers documents it, and one connection per target would put every answer behind the",
    "slowest one.",
    "",
    "### The parser held to h11, before and after",
    "",
    "Issue 20 made the parser accept exactly what h11 accepts (a chunk size of `-5` had looped for",
    "ever without awaiting; `0x5`, `+5`, `HTTP/1.1 000` and a Content-Length of 4,301 digits were read).",
    "`.venv/bin/python -m bench.poll --against 75bac70` measures the poll path above with this tree's",
    "transport and with the one of 75bac70, rounds alternating in one process against one simulator",
    "(2,000 jobs, concurrency 16, 9 rounds; 2026-12-06, load average 9.5 on 2 CPUs): 0.344 ms of CPU",
    "per job poll against 0.336 ms before (1.03x; rounds spread 0.32-0.41 and 0.29-0.42 ms). A",
    "typical head (status line and four headers) takes about 8 µs to take off the buffer and parse,",
    "against 4 µs for the lax parser (timeit, same machine).",
    "",
]


# --- 5. detection -----------------------------------------------------------------------------


def detection_targets(ds: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for d in ds:
        bound = d["poll_interval_s"] + DETECTION_SLACK_S
        rows.append(
            row(
                f"failure to /metrics, {d['mode']}, {d['jobs']} jobs, max",
                f"{d['max_s']:.2f} s",
                f"poll interval {d['poll_interval_s']:g} s",
                f"{d['max_over_poll_interval']:.2f}x the interval",
                f"<= {bound:g} s",
                d["max_s"] <= bound,
            )
        )
    return rows


def detection_body(ds: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            d["mode"],
            f"{d['poll_interval_s']:g} s",
            str(d["jobs"]),
            ", ".join(f"{x:.2f}" for x in d["latencies_s"]),
            f"{d['median_s']:.2f} s",
            f"{d['max_s']:.2f} s",
        ]
        for d in ds
    ]
    d0 = ds[0]
    return [
        "## Detection latency: failed at the provider to failed in /metrics",
        "",
        "The real CLI (`python -m exporter --config.file=…`) against the simulator, both started by",
        f"`tests/harness.py`; steps of {d0['step_seconds']:g} s, jobs with scenario `fail` created at",
        f"random offsets against the poll schedule; /metrics read every {d0['scrape_every_s'] * 1000:.0f} ms.",
        "`discovery`: the exporter finds the jobs in the Basiq user's job list at its own pace.",
        "`registration`: each job is registered through `POST /api/v1/targets/{target}/jobs` as it is",
        "created (which wakes the target's loop: a poll follows about a second later).",
        "",
        *_table(["mode", "poll interval", "jobs", "latencies (s)", "median", "max"], rows),
        "",
        "Latency is counted from the moment the simulator starts answering `failed`, which is the",
        "finished time it reports: created + (fail_step + 1) x step_seconds.",
    ]


# --- the document -----------------------------------------------------------------------------

# --- registrations --------------------------------------------------------------------------


def registration_targets(g: dict[str, Any]) -> list[Row]:
    ours, bare, m = g["exporter"], g["bare"], g["metrics"]
    n = f"{g['jobs_polled']:,}"
    return [
        row(
            f"registrations/s at concurrency {ours['concurrency']}, state file on, polling {n} jobs",
            f"{ours['per_second']:,.0f}/s",
            f"bare Starlette {bare['per_second']:,.0f}/s",
            f"{g['ratio']:.2f}x",
            f">= {REGISTRATIONS_MIN_PER_S:,.0f}/s and >= {REGISTRATIONS_MIN_RATIO:g}x",
            ours["per_second"] >= REGISTRATIONS_MIN_PER_S and g["ratio"] >= REGISTRATIONS_MIN_RATIO,
        ),
        row(
            "registration p99 (202 after commit)",
            f"{ours['p99_ms']:.0f} ms",
            f"bare Starlette {bare['p99_ms']:.0f} ms",
            "",
            f"<= {REGISTRATION_P99_MS:g} ms",
            ours["p99_ms"] <= REGISTRATION_P99_MS,
        ),
        row(
            "/metrics p99 during the registrations",
            f"{m['p99_ms']:.1f} ms",
            "",
            "",
            f"<= {REGISTRATION_SCRAPE_P99_MS:g} ms",
            m["p99_ms"] <= REGISTRATION_SCRAPE_P99_MS,
        ),
    ]


def registration_body(g: dict[str, Any]) -> list[str]:
    ours, bare = g["exporter"], g["bare"]

    def figures(name: str, r: dict[str, Any]) -> list[str]:
        return [
            name,
            f"{r['per_second']:,.0f}",
            latency_cell(r),
            f"{r['server_cpu_us_per_request']:,.0f}",
            r["load_average"],
        ]

    return [
        f"## Registrations at concurrency {ours['concurrency']} for one poll interval, while polling {g['jobs_polled']:,} jobs",
        "",
        "`bench/registration.py`. The CLI runs with a state file, so each 202 is sent after its commit",
        f"(group commit), and polls {g['jobs_polled']:,} jobs of the simulator every {g['poll_interval']:g} s. The",
        f"registrations start as a poll cycle starts and go on for one poll interval ({ours['seconds']:.1f} s,",
        f"{ours['requests']:,} registrations), so they meet every poll of that interval: the whole cycle",
        f"({g['poll_requests_during']:,.0f} poll requests) and each registered id's first poll",
        f"({g['registered_poll_requests_during']:,.0f} requests; the simulator does not know those ids, so",
        "each is dropped as gone), which the baseline does not do. The baseline is a bare Starlette",
        "endpoint on uvicorn that parses the same body and answers 202, measured first in the same run",
        f"for {bare['seconds']:.0f} s, with the same client: raw asyncio keep-alive connections (an httpx",
        "client costs more CPU per request than the server under test). A thread scrapes `/metrics`",
        "with Prometheus' headers every 0.5 s meanwhile.",
        "",
        "The cycle's polls take their share of the exporter's CPU while they run: registrations are",
        "slower in the first seconds of the interval and quicker once the cycle is done. The slowest",
        f"5 s in a row ran at {ours['slowest_5s_per_second']:,.0f}/s, {g['slowest_5s_ratio']:.2f}x bare Starlette;",
        "every second is below.",
        "",
        *_table(
            ["server", "per second", "p50 / p99 / max", "server CPU per request (us)", "load average"],
            [figures("bare Starlette", bare), figures("asyncjob-exporter", ours)],
        ),
        "",
        "Registrations answered in each second of the interval:",
        "",
        "```",
        *_wrapped(", ".join(f"{n:,}" for n in ours["each_second"])),
        "```",
        "",
        f"`/metrics` meanwhile: {latency_cell(g['metrics'])} over {g['metrics']['scrapes']} scrapes, while the jobs",
        f"tracked grew from about {g['jobs_polled'] + 1000:,} to {g.get('jobs_tracked_after', 0):,.0f} (each registration",
        "is a job with its own series until its first poll), so the body grew with them.",
        f"State file after the run: {g['state_file_bytes'] / KIB / KIB:,.1f} MiB with its WAL.",
    ]


def _wrapped(text: str, width: int = 96) -> list[str]:
    """`text` in lines of at most `width` characters, broken after commas."""
    lines, line = [], ""
    for part in text.split(" "):
        if line and len(line) + 1 + len(part) > width:
            lines.append(line)
            line = part
        else:
            line = f"{line} {part}" if line else part
    return [*lines, line] if line else lines


# --- soak at a steady job rate --------------------------------------------------------------

SOAK_RSS_MAX_BYTES = 1024 * KIB  # growth over the measured span


def soak_targets(s: dict[str, Any]) -> list[Row]:
    growth = s["rss_growth_bytes"]
    minutes = s["measured_s"] / 60
    return [
        row(
            f"RSS growth over {minutes:.0f} min at {s['rate']:g} jobs/s ({s['finished_during_span']:,.0f} jobs finished)",
            f"{growth / KIB / KIB:+.2f} MiB",
            f"{s['rss_first_bytes'] / KIB / KIB:.1f} MiB at the start of the span",
            "",
            "< 1 MiB",
            growth < SOAK_RSS_MAX_BYTES,
        ),
        row(
            "jobs acknowledged vs. counted once, after the soak",
            f"{s['acknowledged']:,} / {s['counted']:,.0f}",
            "",
            "",
            "equal",
            s["acknowledged"] == s["counted"] and s["refused"] == 0,
        ),
    ]


def soak_body(s: dict[str, Any]) -> list[str]:
    mib = KIB * KIB
    return [
        "## Soak at a steady job rate",
        "",
        f"`bench/jobrate.py`: Basiq jobs of the simulator that run ~3 s and succeed, {s['rate']:g} a second,",
        "each registered through the real CLI's API (`POST /api/v1/targets/…/jobs`), polled every",
        f"{s['poll_interval']} with `retention: {s['retention']}` and a state file; {s['warmup_s']:g} s of warm-up,",
        f"then {s['measured_s'] / 60:.1f} min measured (RSS from /proc every 5 s, growth from the fitted",
        "line). `BENCH_SOAK_SECONDS` and `BENCH_SOAK_WARMUP` make it longer or shorter.",
        "",
        *_table(
            ["measure", "start of span", "end of span", "growth (fitted)", "max"],
            [
                [
                    "RSS",
                    f"{s['rss_first_bytes'] / mib:.1f} MiB",
                    f"{s['rss_last_bytes'] / mib:.1f} MiB",
                    f"{s['rss_growth_bytes'] / mib:+.2f} MiB",
                    f"{s['rss_max_bytes'] / mib:.1f} MiB",
                ],
                [
                    "state file + WAL",
                    f"{s['state_first_bytes'] / mib:.2f} MiB",
                    f"{s['state_last_bytes'] / mib:.2f} MiB",
                    f"{s['state_growth_bytes'] / mib:+.2f} MiB",
                    f"{s['state_max_bytes'] / mib:.2f} MiB",
                ],
            ],
        ),
        "",
        f"Open files {s['fds'][0]:.0f}-{s['fds'][1]:.0f}; tracked jobs {s['tracked'][0]:,.0f}-{s['tracked'][1]:,.0f};",
        f"{s['finished_during_span']:,.0f} jobs finished in the span; poll errors {s['poll_errors']:.0f} of",
        f"{s['poll_requests']:,.0f} requests; registrations acknowledged {s['acknowledged']:,}, refused {s['refused']},",
        f"counted {s['counted']:,.0f} (each acknowledged job once); the registrations fell at most",
        f"{s['registration_lag_max_s']:.1f} s behind their schedule.",
    ]


SECTIONS: list[Section] = [
    Section("scrape", scrape_body, scrape_targets),
    Section("series", series.body, series.targets),
    Section("changes", changes_body, changes_targets),
    Section("memory", memory_body, memory_targets),
    Section("poll", poll_body, poll_targets),
    Section("detection", detection_body, detection_targets),
    Section("fleet", detection.fleet_body, detection.fleet_targets),
    Section("registration", registration_body, registration_targets),
    Section("auth", auth.body, auth.targets),
    Section("soak", soak_body, soak_targets),
    Section("pgdriver", pgdriver.body, pgdriver.targets),
    Section("cluster", cluster_report.body, cluster_report.targets),
    Section("lockout", lockout.body, lockout.targets),
]


def targets(r: dict[str, Any]) -> list[Row]:
    """One row per target, in section order, for the sections this run has results of."""
    return [x for s in SECTIONS if s.key in r for x in s.targets(r[s.key])]


def render(r: dict[str, Any], command: str) -> str:
    m = r["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    lines = [
        "# Benchmarks",
        "",
        f"Written whole by `make bench` (`{command}`, from the repository root); the raw figures of each",
        "run are kept in `bench/results/` (not committed). Every scrape, latency and memory figure is",
        "taken while the exporter's scheduler polls the simulator, in its own process, every 2 s.",
        "Baselines are measured in the same run: absolute times move from machine to machine and",
        "with other work on a shared machine, the ratios less. The test suite times nothing;",
        "`tests/unit/test_bench_smoke.py` only proves that each benchmark runs.",
        "",
        f"- Date: {m['date']}, commit {m['commit']}",
        f"- Machine: {m['nproc']} CPUs (`nproc`), {m['cpu_model']} (`/proc/cpuinfo`), {m['platform']}",
        f"- Python {m['python']}; {libs}",
        f"- uvloop {'installed' if m['uvloop'] else 'not installed'}, httptools "
        f"{'installed' if m['httptools'] else 'not installed'}"
        + ("" if m["uvloop"] and m["httptools"] else ": uvicorn served on the asyncio loop with h11"),
        f"- Whole run: {r['seconds']:.0f} s; load average (1/5/15 min) {m['load_average_at_start']} at the start,"
        f" {m.get('load_average_at_end', 'unknown')} at the end: other work on the machine moves the"
        " absolute figures (and the baselines with them) from run to run",
        "",
        "## Summary",
        "",
    ]
    rows = targets(r)
    lines += _table(
        ["what", "measured", "baseline (same run)", "ratio", "target", ""],
        [[x["what"], x["measured"], x["baseline"], x["ratio"], x["target"], _ok(x["met"])] for x in rows],
    )
    missed = [x["what"] for x in rows if not x["met"]]
    lines += ["", f"{len(rows) - len(missed)} of {len(rows)} targets met."]
    if missed:
        lines += ["Missed: " + "; ".join(missed) + "."]
    for section in SECTIONS:
        if section.key in r:
            lines += ["", *section.body(r[section.key])]
    notes = [*_machine_note(m), *r.get("notes", [])]
    if notes:
        lines += ["", "## Reading the figures", "", *notes]
    if r.get("profiles"):
        lines += ["", "## Profiles", ""]
        for title, text in r["profiles"].items():
            lines += [f"### {title}", "", *_code(text), ""]
    return "\n".join(lines).rstrip() + "\n"


def _machine_note(m: dict[str, Any]) -> list[str]:
    """Say so when other work held more CPUs than the machine has: latencies then include waits
    for a CPU, and the exporter, the simulator and the scraper shared what was left."""
    try:
        load = float(str(m["load_average_at_start"]).split()[0])
    except (KeyError, ValueError, IndexError):
        return []
    if load <= (m.get("nproc") or 1):
        return []
    return [
        f"The run started with a load average of {load:g} on {m['nproc']} CPUs: more runnable work than",
        "CPUs before the benchmark began. Latency figures then include waits for a CPU that no change",
        "in the exporter removes, and the exporter, the simulator and the scraper share what is left;",
        "baselines measured in the same run are slowed alike, which the ratios keep.",
    ]
