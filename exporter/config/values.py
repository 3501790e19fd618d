"""Value types of the config: durations, URLs without credentials, secrets from files or variables."""

from __future__ import annotations

import difflib
import logging
import os
import re
import time
import typing
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def without_credentials(url: str) -> str:
    """`url`, refused when it holds user:password@: those would travel in clear and be printed
    wherever the URL is (logs, check-config); the message does not repeat them."""
    authority = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:
        raise ValueError("must not hold credentials (user:password@host); put them in auth")
    return url


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus-style duration (`500ms`, `30s`, `5m`, `1h30m`) or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h") from None
    else:
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[Duration, Field(gt=0)]


# Directory of the config file being validated: relative `*_file` paths are read from there, as
# Prometheus reads the files its config names.
CONFIG_DIR: ContextVar[Path | None] = ContextVar("asyncjob_config_dir", default=None)


def _readable_file(path: str) -> str:
    base = CONFIG_DIR.get()
    if base is not None and not Path(path).is_absolute():
        path = str(base / path)
    p = Path(path)
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    return path


def _present_env(name: str) -> str:
    if name not in os.environ:
        raise ValueError(f"environment variable {name} is not set")
    return name


SecretFile = Annotated[str, AfterValidator(_readable_file)]
SecretEnv = Annotated[str, AfterValidator(_present_env)]


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`; did you mean X?` when a choice is close to `word`, else ``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


# How often (seconds) at most an API token file is looked at for a change: a stat, not a read.
TOKEN_CHECK_EVERY = 1.0


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def read_token(path: str) -> str:
    """The token in `path`, surrounding blanks stripped; ValueError naming the file when it is
    empty or blank (an empty token would match an empty header) or cannot be read."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token:
        raise ValueError(f"{path} is empty or blank: a token is required (an empty one would let anyone in)")
    return token


class TokenFile:
    """A token read from its file once, and again only when the file changed (its mtime, size or
    inode, looked at no more than every TOKEN_CHECK_EVERY seconds): never a read per request.
    A file found empty, blank or unreadable (a rotation half written, a file being replaced)
    keeps the token read before, so that window never opens the door."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._stamp = _stamp(path)
        self.value = read_token(path)  # ValueError: refused at load, start and reload alike
        self._next_check = clock() + TOKEN_CHECK_EVERY

    def current(self) -> str:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + TOKEN_CHECK_EVERY
            stamp = _stamp(self.path)
            if stamp is not None and stamp != self._stamp:
                try:
                    self.value = read_token(self.path)
                    self._stamp = stamp
                except ValueError as e:
                    # Looked at again next time: the rotation may finish meanwhile.
                    logging.getLogger("asyncjob.config").warning(
                        "API token file unusable; the token read before is kept", extra={"error": str(e)}
                    )
        return self.value
