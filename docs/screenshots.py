"""Takes the job pages' screenshots in docs/ from a running demo, with Debian's chromium.

python docs/screenshots.py              # starts `asyncjob-exporter demo`, waits, shoots, stops it
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.tools import CHROMIUM_ARGS  # noqa: E402

WAIT_SECONDS = 75  # long enough for jobs to succeed, fail, get stuck and wait for their user


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    from playwright.sync_api import sync_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOB_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", f"--web.listen-address=127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(WAIT_SECONDS)
        failed = httpx.get(f"{base}/api/v1/jobs?status=failed", timeout=5).json()["jobs"]
        job = next((j for j in failed if j["steps"]), failed[0])
        with tempfile.TemporaryDirectory(prefix="asyncjob-chromium-") as profile, sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path="/usr/bin/chromium",
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 900},
            )
            page = context.new_page()
            shots = {
                "page-targets.png": f"{base}/",
                "page-jobs.png": f"{base}/jobs?status=failed",
                "page-job.png": f"{base}/jobs/{job['target']}/{job['id']}",
            }
            for name, url in shots.items():
                page.goto(url)
                page.screenshot(path=str(REPO / "docs" / name), full_page=name != "page-jobs.png")
                print(REPO / "docs" / name)
            context.close()
    finally:
        demo.terminate()
        demo.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
