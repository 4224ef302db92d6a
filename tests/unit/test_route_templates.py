"""Route templates from the scope: the access line's and metrics' label, and the
rate-limit key's route part, which must not change between releases."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from app_kernel._runtime import ENTRY_KEY
from app_kernel.reliability.ratelimit_deps import route_identity
from app_kernel.web.request_context import route_template


def _route(template: str | None) -> SimpleNamespace:
    return SimpleNamespace(path_format=template, path=template)


def _included(route: SimpleNamespace, prefixed: str) -> SimpleNamespace:
    """FastAPI 0.137+'s record of a route matched through ``include_router``."""
    return SimpleNamespace(original_route=route, starlette_route=None, path_format=prefixed)


_ORG_ITEM = _route("/items/{id}")
_LISTING = _route("")

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "included-router-route-without-its-prefix",
        {
            "route": _route("/items/{item_id}"),
            "path": "/api/v1/items/42",
            "path_params": {"item_id": 42},
        },
        "/api/v1/items/{item_id}",
        "GET /api/v1/items/{item_id}",
    ),
    (
        "route-copied-with-its-prefix",
        {
            "route": _route("/api/v1/items/{item_id}"),
            "path": "/api/v1/items/7",
            "path_params": {"item_id": 7},
        },
        "/api/v1/items/{item_id}",
        "GET /api/v1/items/{item_id}",
    ),
    (
        "no-parameters",
        {"route": _route("/health"), "path": "/api/health", "path_params": {}},
        "/api/health",
        "GET /api/health",
    ),
    (
        "mounted-under-a-root-path",
        {
            "route": _route("/items/{id}"),
            "path": "/svc/api/items/3",
            "root_path": "/svc",
            "path_params": {"id": 3},
        },
        "/api/items/{id}",
        "GET /api/items/{id}",
    ),
    (
        "params-that-do-not-render-the-template",
        {"route": _route("/items/{id}"), "path": "/api/items/3", "path_params": {}},
        "/items/{id}",
        "GET /items/{id}",
    ),
    (
        # Without FastAPI's record of the include prefix there is nothing to add.
        # An included "" route has that record (the next cases and the HTTP tests).
        "a-route-with-an-empty-template-and-no-include-record",
        {"route": _route(""), "path": "/api", "path_params": {}},
        "",
        "GET ",
    ),
    (
        "included-route-with-fastapis-record-of-the-prefix",
        {
            "route": _ORG_ITEM,
            "fastapi": {"effective_route_context": _included(_ORG_ITEM, "/orgs/{org}/items/{id}")},
            "path": "/orgs/acme/items/7",
            "path_params": {"org": "acme", "id": 7},
        },
        "/orgs/{org}/items/{id}",
        "GET /orgs/{org}/items/{id}",
    ),
    (
        "included-route-declared-empty",
        {
            "route": _LISTING,
            "fastapi": {"effective_route_context": _included(_LISTING, "/api/widgets")},
            "path": "/api/widgets",
            "path_params": {},
        },
        "/api/widgets",
        "GET /api/widgets",
    ),
    (
        "plain-starlette-route-of-an-included-router",  # Starlette leaves scope["route"] unset
        {
            "route": None,
            "fastapi": {"effective_route_context": _included(_route("/p"), "/api/p")},
            "path": "/api/p",
            "path_params": {},
        },
        "/api/p",
        "GET /api/p",
    ),
    (
        "route-of-an-app-mounted-below-an-included-router",  # the record is the mount's
        {
            "route": _route("/s/{x}"),
            "fastapi": {"effective_route_context": _included(_route("/m"), "/api/m/{path}")},
            "path": "/api/m/s/1",
            "root_path": "/api/m",
            "path_params": {"path": "s/1", "x": "1"},
        },
        "/s/{x}",
        "GET /s/{x}",
    ),
    (
        "no-route-matched",
        {"route": None, "path": "/nowhere/12"},
        "__unmatched__",
        "GET /nowhere/12",
    ),
    (
        "a-route-without-a-text-template",
        {"route": _route(None), "path": "/odd/1"},
        "__unmatched__",
        "GET /odd/1",
    ),
]


@pytest.mark.parametrize(
    ("scope", "template", "identity"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_templates_and_rate_limit_identities(
    scope: dict[str, Any], template: str, identity: str
) -> None:
    scope = {"type": "http", "method": "GET", "state": {}, **scope}
    if scope["route"] is None:
        scope.pop("route")
    assert route_template(dict(scope)) == template
    assert route_identity(dict(scope)) == identity


def _mounted_scope(entry_root: str, root_path: str, route: object, **extra: Any) -> dict[str, Any]:
    """A request answered below ``app.mount`` s of the kernel app ``_KERNEL_APP``."""
    return {
        "type": "http",
        "method": "GET",
        "route": route,
        "root_path": root_path,
        "state": {ENTRY_KEY: (_KERNEL_APP, entry_root)},
        **extra,
    }


_REPORTS = Starlette(routes=[Route("/daily/{day}", lambda request: None)])
_TENANT = Starlette(routes=[Mount("/reports", app=_REPORTS), Mount("", app=_REPORTS)])
_KERNEL_APP = SimpleNamespace(
    routes=[Mount("", app=_REPORTS), Mount("/t/{tenant:str}", app=_TENANT)]
)


@pytest.mark.parametrize(
    ("entry_root", "root_path", "route", "path", "template"),
    [
        ("", "/t/acme", _route("/items/{id}"), "/t/acme/items/1", "/t/{tenant}/items/{id}"),
        (
            "/svc",  # the kernel app itself mounted below another app at /svc
            "/svc/t/acme/reports",
            _route("/daily/{day}"),
            "/svc/t/acme/reports/daily/mon",
            "/t/{tenant}/reports/daily/{day}",
        ),
        ("", "/t/acme", None, "/t/acme/nowhere", "/t/{tenant}/{path}"),
        ("", "/elsewhere", _route("/items/{id}"), "/elsewhere/items/1", "/items/{id}"),
        ("/svc", "/svc", _route("/items/{id}"), "/svc/items/1", "/items/{id}"),
    ],
    ids=["one-mount", "nested-mounts", "no-route-below-the-mount", "unknown-mount", "no-mount"],
)
def test_templates_below_mounts_of_the_kernel_app(
    entry_root: str, root_path: str, route: object, path: str, template: str
) -> None:
    params = {"tenant": "acme", "id": "1", "day": "mon"}
    scope = _mounted_scope(entry_root, root_path, route, path=path, path_params=params)
    if route is None:
        scope.pop("route")
    assert route_template(scope) == template
    assert "acme" not in route_identity(scope)
