"""The full template of the route a request matched, prefix included."""

from __future__ import annotations

from typing import Any

from starlette.routing import Mount

from app_kernel._runtime import kernel_entry
from app_kernel.types import Scope

__all__ = ("full_template",)


def full_template(route: object, scope: Scope) -> str | None:
    """``/api/v1/items/{item_id}`` for a request to ``/api/v1/items/42``; None when
    ``route`` has no text template (and the request is not below a mount).

    Routers disagree on what ``scope["route"]`` holds for an included router:
    older FastAPI copies each route with its prefix; FastAPI 0.137 and later
    keep the original route without it and record the prefixed form of the
    matched route in the scope (see :func:`_included_template`). Whichever
    template is found is then placed in the real path (below ``root_path``):
    it is rendered with the request's path params, and whatever prefix the
    path has in front of the rendered text is put back. When the params do not
    render the template, it is answered as it is.

    Below an app mounted on the kernel's app (``app.mount``), the templates of
    the mounts come first (see :func:`_mount_prefix`).
    """
    template = _included_template(route, scope)
    if template is None:
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    mounts = _mount_prefix(scope, root_path)
    if not isinstance(template, str):
        # A mounted app without routes of its own (static files, say) is labelled
        # as OpenTelemetry's http.route labels it: the mount and "/{path}".
        return mounts + "/{path}" if mounts else None
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    if "{" not in template:  # no parameters: the template renders as itself
        rendered = template
    else:
        try:
            rendered = template.format(**scope.get("path_params", {}))
        except (KeyError, IndexError, ValueError):
            return mounts + template
    if rendered and path.endswith(rendered):
        return mounts + path[: len(path) - len(rendered)] + template
    return mounts + template


def _mount_prefix(scope: Scope, root_path: str) -> str:
    """``/t/{tenant}`` for a request answered by an app mounted on the kernel's app
    with ``app.mount("/t/{tenant}", sub_app)``; ``""`` for the kernel's own routes.

    Starlette moves the mount's raw path (``/t/acme``) into ``root_path``. The
    kernel's app and its root path were noted when the request came in
    (``ENTRY_KEY``); the raw part is matched against that app's mounts, mount
    by mount, and their templates are put together. Mounts that do not explain
    it (one declared in an included router, say) give ``""``: never the raw
    text, which would put a label value per tenant in the metrics.
    """
    entry = kernel_entry(scope)
    if entry is None:
        return ""
    app, entry_root = entry
    if len(root_path) <= len(entry_root) or not root_path.startswith(entry_root):
        return ""
    rest = root_path[len(entry_root) :]
    routes: Any = getattr(app, "routes", ())
    prefix = ""
    while rest:
        for mount in routes:
            if not isinstance(mount, Mount):
                continue
            match = mount.path_regex.match(rest + "/")
            if match is None:
                continue
            below = "/" + match.group("path")  # what the mount leaves, and a "/"
            if len(below) > len(rest):  # a mount at "" takes nothing
                continue
            prefix += mount.path_format.removesuffix("/{path}")
            rest = below[:-1]
            routes = mount.routes
            break
        else:
            return ""
    return prefix


def _included_template(route: object, scope: Scope) -> str | None:
    """The prefixed template FastAPI 0.137+ kept for the route it matched through
    ``include_router``; None when there is none, or when it is not ``route``'s.

    Only the route's own template loses the include prefix, and rebuilding the
    prefix from the path alone goes wrong twice: a parameter in the prefix
    (``include_router(r, prefix="/orgs/{org_id}")``) would put every raw
    ``org_id`` in a metric label, and routes declared as ``""`` would all get
    the empty template. FastAPI keeps the matched route's prefixed form in
    ``scope["fastapi"]["effective_route_context"]``. It is taken unless
    ``scope["route"]`` names another route with a template of its own (a
    route of an app mounted below the included router). For routes that are
    not FastAPI's own, ``scope["route"]`` is None or the included-router node.
    """
    fastapi_scope = scope.get("fastapi")
    if not isinstance(fastapi_scope, dict):
        return None
    context = fastapi_scope.get("effective_route_context")
    if context is None:
        return None
    prefixed = getattr(context, "starlette_route", None)
    if (
        route is not None
        and route is not getattr(context, "original_route", None)
        and route is not prefixed
        and isinstance(getattr(route, "path_format", None) or getattr(route, "path", None), str)
    ):
        return None
    template = getattr(prefixed or context, "path_format", None)
    return template if isinstance(template, str) and template else None
