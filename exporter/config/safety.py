"""What a valid config still leaves unsafe: an API anyone can reach and change, secrets that are
the examples' placeholders. Warnings, said by check-config and at start; never a refusal."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from exporter.config.models import Settings
from exporter.config.targets import AuthConfig

# The examples' secret files hold `example-…-replace-me`; a copied example that still holds one
# authenticates with nothing and fails at the provider, far from its cause.
PLACEHOLDER = re.compile(r"replace[-_ ]?me|change[-_ ]?me|your[-_ ].*[-_ ]here", re.IGNORECASE)


def is_loopback(listen_address: str) -> bool:
    """True when `[host]:port` is reachable from this host alone (127.0.0.0/8, ::1, localhost)."""
    host = listen_address.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "" (every interface) or a host name other than localhost
        return False


def open_api(settings: Settings, listen_address: str, basic_auth: bool = False) -> str | None:
    """The risk of an API without a token on an address other hosts reach; None when there is none."""
    if settings.api.token_file or basic_auth or is_loopback(listen_address):
        return None
    return (
        f"the API takes no token and listens on {listen_address}: anyone who reaches that address "
        "can register, read and delete jobs (and read their messages); set api.token_file, "
        "basic_auth_users in --web.config.file, or --web.listen-address=127.0.0.1:PORT"
    )


def _placeholder_file(path: str) -> bool:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False  # said by validation, or the file went away: not this check's business
    return bool(PLACEHOLDER.search(text))


def _auth_placeholders(where: str, auth: AuthConfig) -> list[str]:
    out = []
    for secret in ("token", "api_key", "password", "client_secret"):
        path = getattr(auth, f"{secret}_file")
        if path and _placeholder_file(path):
            out.append(f"{where}.{secret}_file: {path} holds a placeholder, not a secret")
        variable = getattr(auth, f"{secret}_env")
        if variable and PLACEHOLDER.search(os.environ.get(variable, "")):
            out.append(f"{where}.{secret}_env: {variable} holds a placeholder, not a secret")
    return out


def placeholder_secrets(settings: Settings) -> list[str]:
    """A line per secret whose file or variable holds a placeholder (`…-replace-me`), by key path."""
    out = []
    if settings.api.token_file and _placeholder_file(settings.api.token_file):
        out.append(f"api.token_file: {settings.api.token_file} holds a placeholder, not a secret")
    for i, target in enumerate(settings.targets):
        out += _auth_placeholders(f"targets[{i}](name={target.name}).auth", target.auth)
    return out


def warnings(settings: Settings, listen_address: str, basic_auth: bool = False) -> list[str]:
    """Every warning about `settings` served on `listen_address`, one line each."""
    risk = open_api(settings, listen_address, basic_auth)
    return ([risk] if risk else []) + placeholder_secrets(settings)
