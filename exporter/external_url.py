"""`--web.external-url`: the address people reach the exporter at. Its links start with it
(exporter.pages, the OpenAPI document), and a path in it is answered as Prometheus answers its
route prefix, so a proxy may forward `/asyncjob/jobs` as is or strip it to `/jobs`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send


def path_prefix(external_url: str) -> str:
    """The path of `external_url` without its trailing slash: `/asyncjob`, or "" for none."""
    return urlsplit(external_url).path.rstrip("/")


class UnderPrefix:
    """The exporter's app, also answering under `prefix`: a request for `prefix/x` is routed as
    `/x` (Starlette reads the prefix as the root path), one for `prefix` alone as `prefix/`.
    Paths outside it (a scrape of /metrics, a probe of /healthz) are answered as before, and the
    HTTP protocol's direct answers (`direct`, `direct_post`) stay those of the app."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app, self.prefix = app, prefix
        self.direct: Any = getattr(app, "direct", None)
        self.direct_post: Any = getattr(app, "direct_post", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == self.prefix:
                path = self.prefix + "/"
            if path.startswith(self.prefix + "/"):
                scope = {**scope, "path": path, "root_path": scope.get("root_path", "") + self.prefix}
        await self.app(scope, receive, send)


def serving(app: ASGIApp, external_url: str) -> ASGIApp:
    """`app`, answering under the external URL's path too when it has one."""
    prefix = path_prefix(external_url)
    return UnderPrefix(app, prefix) if prefix else app
