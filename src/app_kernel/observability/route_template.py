"""The full template of the route a request matched, prefix included."""

from __future__ import annotations

from app_kernel.types import Scope

__all__ = ("full_template",)


def full_template(route: object, scope: Scope) -> str | None:
    """``/api/v1/items/{item_id}`` for a request to ``/api/v1/items/42``; None when
    ``route`` has no text template.

    Routers disagree on what ``scope["route"]`` holds for an included router:
    older FastAPI copies each route with its prefix, newer FastAPI keeps the
    original route without it. So the template is rebuilt the same way for
    both: render the route's own template with the request's path params and
    put back whatever prefix the real path (below ``root_path``) has in front
    of it. When the params do not render the template, it is answered as it is.
    """
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
