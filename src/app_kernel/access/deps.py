"""FastAPI dependencies that enforce the app's access decisions.

Each one authenticates the caller (``get_current_user``), reads the resource
id from the route's PATH parameters only (never the query, body or headers,
which a caller could use to ask about one workspace while acting on another),
asks the app's checker and returns the caller's :class:`UserIdentity`.

They fail closed:

* the checker says anything but ``True``: 403;
* no checker is registered: 500, logged as an error naming the call to add;
* the checker raises or times out: 500, logged with the traceback;
* the route has no such path parameter: 500, logged.

An ``HTTPException`` (4xx/5xx) raised by the checker itself is passed on
unchanged, so an app may answer 404 to hide that a workspace exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from app_kernel.access.errors import AccessNotConfigured
from app_kernel.access.scope import scope_access
from app_kernel.access.workspace import workspace_access
from app_kernel.auth.deps import get_current_user
from app_kernel.auth.models import UserIdentity
from app_kernel.observability.logging import get_logger

__all__ = (
    "require_scope",
    "require_workspace_member",
    "require_workspace_owner",
    "require_workspace_role",
)

_log = get_logger("app_kernel.access_control")

_CHECK_FAILED = "The access check failed."
_INSUFFICIENT_SCOPE = {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}

CurrentUser = Annotated[UserIdentity, Depends(get_current_user)]
UserDependency = Callable[..., Coroutine[Any, Any, UserIdentity]]


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", None) or request.url.path)


def _path_param(request: Request, name: str) -> str:
    value = request.path_params.get(name)
    if value is None or value == "":
        _log.error(
            "access dependency on a route without its path parameter",
            route=_route(request),
            parameter=name,
        )
        detail = f"The route has no {{{name}}} path parameter to check access on."
        raise HTTPException(500, detail)
    return str(value)


async def _allowed(
    request: Request, check: str, decide: Awaitable[bool], fields: dict[str, str]
) -> bool:
    """Await ``decide``, turning every way it can fail into a logged 500."""
    try:
        return (await decide) is True
    except AccessNotConfigured as exc:
        _log.error(
            "access check with no checker registered; denying",
            check=check,
            route=_route(request),
            error=str(exc),
            **fields,
        )
        raise HTTPException(500, str(exc)) from None
    except StarletteHTTPException as exc:
        if exc.status_code >= 400:
            raise
        _log.error("access checker raised a non-error HTTPException; denying", check=check)
        raise HTTPException(500, _CHECK_FAILED) from None
    except Exception as exc:
        _log.error(
            "access checker failed; denying",
            check=check,
            route=_route(request),
            exc_info=exc,
            **fields,
        )
        raise HTTPException(500, _CHECK_FAILED) from None


def _deny(
    request: Request,
    check: str,
    detail: str,
    fields: dict[str, str],
    headers: dict[str, str] | None = None,
) -> HTTPException:
    _log.warning("access denied", check=check, route=_route(request), **fields)
    return HTTPException(403, detail, headers=headers)


async def require_workspace_member(request: Request, user: CurrentUser) -> UserIdentity:
    """The caller, when the app's checker says they belong to ``{workspace_id}``.

    Raises:
        HTTPException: 401 unauthenticated; 403 not a member; 500 no checker,
            checker failure or no ``workspace_id`` path parameter.
    """
    workspace_id = _path_param(request, "workspace_id")
    fields = {"user_id": user.id, "workspace_id": workspace_id}
    if not await _allowed(
        request, "member", workspace_access.is_member(user.id, workspace_id), fields
    ):
        raise _deny(request, "member", "You are not a member of this workspace.", fields)
    return user


async def require_workspace_owner(request: Request, user: CurrentUser) -> UserIdentity:
    """The caller, when the app's checker says they own ``{workspace_id}``.

    Raises:
        HTTPException: 401 unauthenticated; 403 not the owner; 500 as for
            :func:`require_workspace_member`.
    """
    workspace_id = _path_param(request, "workspace_id")
    fields = {"user_id": user.id, "workspace_id": workspace_id}
    if not await _allowed(
        request, "owner", workspace_access.is_owner(user.id, workspace_id), fields
    ):
        raise _deny(request, "owner", "Only the workspace owner may do this.", fields)
    return user


def require_workspace_role(*roles: str) -> UserDependency:
    """A dependency admitting the workspace's owner and members holding one of ``roles``.

    Usage: ``user = Depends(require_workspace_role("admin", "editor"))``.

    Raises:
        ValueError: no role given, or a role is not a non-empty string.
    """
    if not roles or not all(isinstance(role, str) and role for role in roles):
        msg = f"require_workspace_role: expected one or more role names, got {roles!r}"
        raise ValueError(msg)
    allowed_roles = frozenset(roles)
    detail = f"This needs one of the workspace roles: {', '.join(roles)}."

    async def has_role(user_id: str, workspace_id: str) -> bool:
        if await workspace_access.is_owner(user_id, workspace_id):
            return True
        if not await workspace_access.is_member(user_id, workspace_id):
            return False
        return await workspace_access.get_role(user_id, workspace_id) in allowed_roles

    async def require_role(request: Request, user: CurrentUser) -> UserIdentity:
        workspace_id = _path_param(request, "workspace_id")
        fields = {"user_id": user.id, "workspace_id": workspace_id}
        if not await _allowed(request, "role", has_role(user.id, workspace_id), fields):
            raise _deny(request, "role", detail, fields)
        return user

    return require_role


def require_scope(action: str, resource_type: str, path_param: str) -> UserDependency:
    """A dependency admitting callers the app's scope checker allows.

    The resource id is the route's ``{path_param}`` path parameter:
    ``Depends(require_scope("delete", "document", "doc_id"))`` asks
    ``has_scope(user.id, "delete", "document", <doc_id>)``. A denial is a 403
    with ``WWW-Authenticate: Bearer error="insufficient_scope"``.

    Raises:
        ValueError: an argument is not a non-empty string.
    """
    for name, value in (
        ("action", action),
        ("resource_type", resource_type),
        ("path_param", path_param),
    ):
        if not isinstance(value, str) or not value:
            msg = f"require_scope: {name} must be a non-empty string, got {value!r}"
            raise ValueError(msg)
    detail = f"You may not {action} this {resource_type}."

    async def require(request: Request, user: CurrentUser) -> UserIdentity:
        resource_id = _path_param(request, path_param)
        fields = {
            "user_id": user.id,
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id,
        }
        decision = scope_access.has_scope(user.id, action, resource_type, resource_id)
        if not await _allowed(request, "scope", decision, fields):
            raise _deny(request, "scope", detail, fields, _INSUFFICIENT_SCOPE)
        return user

    return require
