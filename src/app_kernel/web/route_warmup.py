"""Prepare the app's routes and OpenAPI document at start-up, not during the first request.

Recent FastAPI releases prepare the routes of an included router (dependency
graphs, parameter validators) the first time a request is matched against
them, on the event loop. The first request after start, often a 404 that
walks every route, then stalls the loop for a few milliseconds per route:
about 50 ms for a dozen routes on a 2-core machine. Matching a request that no
route answers against every route once, before serving, moves that cost into
start-up. ``BaseRoute.matches`` is Starlette's public API, so on a FastAPI that
prepares routes eagerly this changes nothing and costs next to nothing.

The OpenAPI document is built by the first request for ``/openapi.json`` (the
docs pages ask for it), also on the loop: about 30 ms for the kernel's own
routes and a few test routes, more for a larger app. It is built then, too,
and FastAPI keeps it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.routing import BaseRoute

__all__ = ("prepare_openapi", "prepare_routes")

_PROBE_PATH = "/.app-kernel-route-warm-up"


def prepare_routes(routes: Sequence[BaseRoute]) -> None:
    """Match a path no route serves against every route; blocking, so run it in a thread."""
    for route in routes:
        # An app's own route class may want more of a scope than this probe has;
        # preparing is an optimisation, never a reason to refuse to start.
        with contextlib.suppress(Exception):
            route.matches(_probe_scope())


def prepare_openapi(app: FastAPI) -> None:
    """Build (and so cache) ``app``'s OpenAPI document; blocking, so run it in a thread.

    A document that cannot be built is left for ``/openapi.json`` to report,
    as it did before: the docs are never a reason to refuse to start.
    """
    if app.openapi_url is None:
        return
    with contextlib.suppress(Exception):
        app.openapi()


def _probe_scope() -> dict[str, object]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": _PROBE_PATH,
        "raw_path": _PROBE_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": None,
        "server": None,
    }
