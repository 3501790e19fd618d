"""Helpers shared by tests that need outside programs (and the certificates openssl makes), load
the repo's generator scripts, or look for cyclic garbage."""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """Path of an outside program (promtool, amtool, prometheus…).

    A missing one fails when CI is set (.ci/run installs them) and skips elsewhere, with the reason.
    """
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this check must run")
    pytest.skip(f"{message}; set CI=1 to make this a failure")


def openssl(*args: str, cwd: Path) -> None:
    """Run openssl in `cwd` (test certificates); the test fails where it is not installed."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make test certificates")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def self_signed(
    directory: Path, subject: str, cert: str = "cert.pem", key: str = "key.pem", extension: str = ""
) -> tuple[Path, Path]:
    """A self-signed certificate (a test server's, or a test CA's) and its key, valid two days,
    written to `directory`; `extension` as openssl's -addext (subjectAltName=IP:127.0.0.1)."""
    addext = ("-addext", extension) if extension else ()
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
        "-days", "2", "-subj", subject, *addext, cwd=directory,
    )  # fmt: skip
    return directory / cert, directory / key


def load_script(module_name: str, relative_path: str) -> ModuleType:
    """Import a generator script of the repo (dashboards/generate.py, docs/generate.py…) once."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / relative_path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> str:
    """Debian's chromium (apt-get install chromium), driven by Playwright without a browser download.

    Missing, it fails when CI is set (scripts/install-test-deps installs it) and skips elsewhere.
    """
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path:
        return path
    message = "chromium or playwright is missing (apt-get install chromium; pip install -e '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this check must run")
    pytest.skip(f"{message}; set CI=1 to make this a failure")


@contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """The type names of the cyclic garbage made inside the block, filled in as it ends: the
    automatic GC is off meanwhile (nothing is collected unseen), then one collection saves what
    only it would free."""
    left: list[str] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield left
        gc.collect()
        left.extend(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
