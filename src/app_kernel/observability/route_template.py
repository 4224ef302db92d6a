"""The full template of the route a request matched, prefix included."""

from __future__ import annotations

from app_kernel.types import Scope

__all__ = ("full_template",)


def full_template(route: object, scope: Scope) -> str | None:
    """``/api/v1/items/{item_id}`` for a request to ``/api/v1/items/42``; None when
    ``route`` has no text template.

    Routers disagree on what ``scope["route"]`` holds for an included router:
    older FastAPI copies each route with its prefix; FastAPI 0.137 and later
    keep the original route without it and record the prefixed form of the
    matched route in the scope (see :func:`_included_template`). Whichever
    template is found is then placed in the real path (below ``root_path``):
    it is rendered with the request's path params, and whatever prefix the
    path has in front of the rendered text is put back. When the params do not
    render the template, it is answered as it is.
    """
    template = _included_template(route, scope)
    if template is None:
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    if "{" not in template:  # no parameters: the template renders as itself
        rendered = template
    else:
        try:
            rendered = template.format(**scope.get("path_params", {}))
        except (KeyError, IndexError, ValueError):
            return template
    if rendered and path.endswith(rendered):
        return path[: len(path) - len(rendered)] + template
    return template


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
