"""Shared test set-up: a clean ASYNCJOB_* environment for every test, the fixtures folder, and a
real PostgreSQL for the cluster's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import Postgres, new_database, postgres

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ASYNCJOB_"):
            monkeypatch.delenv(key)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Postgres]:
    """A real PostgreSQL for the tests of one module (tests/postgres.py)."""
    with postgres() as pg:
        yield pg


@pytest.fixture
def dsn(postgres_server: Postgres) -> str:
    """A database of its own on the module's server, for one test."""
    return new_database(postgres_server)
