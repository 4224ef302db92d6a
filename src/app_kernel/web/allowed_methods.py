"""The ``Allow`` header of a routing 405: every method the path answers.

Starlette answers a method a path does not serve with the methods of the first
route whose path matched. FastAPI apps commonly declare ``GET /items`` and
``POST /items`` as two routes, so ``PUT /items`` was told ``Allow: GET``,
although RFC 9110 (section 15.5.6) asks for every method the resource
supports. :func:`allowed_methods` asks each route whose path matches, through
Starlette's public ``BaseRoute.matches``, which of the HTTP methods it serves.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match

from app_kernel.types import Scope

__all__ = ("allowed_methods", "serves")

# RFC 9110's methods and PATCH (RFC 5789), in the order ``Allow`` lists them.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str] | None:
    """The methods some route serves on ``scope``'s path; None when one serves its
    own method too (then the 405 came from an endpoint, which knows better).

    HEAD is listed wherever GET is: the kernel answers it on every GET route.
    """
    candidates: list[BaseRoute] = []
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return None
        if match is Match.PARTIAL:
            candidates.append(route)
    served = {
        method for method in _METHODS if any(serves(route, scope, method) for route in candidates)
    }
    if "GET" in served:
        served.add("HEAD")
    return [method for method in _METHODS if method in served]


def serves(route: BaseRoute, scope: Scope, method: str) -> bool:
    """True when ``route`` answers ``method`` on ``scope``'s path."""
    match, _ = route.matches({**scope, "method": method})
    return match is Match.FULL
