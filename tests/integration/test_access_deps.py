"""The access dependencies on real routes: 403 on deny, 500 (never a grant) on failure."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, ClassVar

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app_kernel.access import (
    require_scope,
    require_workspace_member,
    require_workspace_owner,
    require_workspace_role,
    scope_access,
    workspace_access,
)
from app_kernel.auth.deps import get_current_user
from app_kernel.auth.models import UserIdentity
from app_kernel.observability.logging import configure_logging
from app_kernel.web.problems import http_exception_handler, validation_exception_handler

LogLines = Callable[[], list[dict[str, Any]]]


class Workspaces:
    """Workspaces ``w1`` (owner olga; alice editor, bob viewer) and ``w2`` (carol admin)."""

    members: ClassVar[dict[str, dict[str, str]]] = {
        "w1": {"alice": "editor", "bob": "viewer"},
        "w2": {"carol": "admin"},
    }
    owners: ClassVar[dict[str, str]] = {"w1": "olga", "w2": "carol"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def is_member(self, user_id: str, workspace_id: str) -> bool:
        self.calls.append(("is_member", user_id, workspace_id))
        return user_id in self.members.get(workspace_id, {})

    async def is_owner(self, user_id: str, workspace_id: str) -> bool:
        self.calls.append(("is_owner", user_id, workspace_id))
        return self.owners.get(workspace_id) == user_id

    async def get_role(self, user_id: str, workspace_id: str) -> str | None:
        self.calls.append(("get_role", user_id, workspace_id))
        return self.members.get(workspace_id, {}).get(user_id)


class Answering:
    """A checker of both kinds that returns ``answer`` to everything."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def is_member(self, user_id: str, workspace_id: str) -> Any:
        return self.answer

    async def is_owner(self, user_id: str, workspace_id: str) -> Any:
        return self.answer

    async def get_role(self, user_id: str, workspace_id: str) -> Any:
        return self.answer

    async def has_scope(self, *args: str) -> Any:
        return self.answer


class Raising:
    """A checker of both kinds that raises ``error`` from everything."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def is_member(self, user_id: str, workspace_id: str) -> bool:
        raise self.error

    async def is_owner(self, user_id: str, workspace_id: str) -> bool:
        raise self.error

    async def get_role(self, user_id: str, workspace_id: str) -> str | None:
        raise self.error

    async def has_scope(self, *args: str) -> bool:
        raise self.error


class Documents:
    """alice may delete d1; everybody may read."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    async def has_scope(
        self, user_id: str, action: str, resource_type: str, resource_id: str
    ) -> bool:
        self.calls.append((user_id, action, resource_type, resource_id))
        return action == "read" or (user_id, action, resource_id) == ("alice", "delete", "d1")


async def fake_current_user(x_user: Annotated[str | None, Header()] = None) -> UserIdentity:
    if x_user is None:
        raise HTTPException(401, "Authentication required.", {"WWW-Authenticate": "Bearer"})
    return UserIdentity(id=x_user)


def build_app() -> FastAPI:
    app = FastAPI()
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.dependency_overrides[get_current_user] = fake_current_user

    # Written exactly as the spec shows.
    @app.get("/workspace/{workspace_id}/data")
    async def get_data(
        workspace_id: str,
        user: UserIdentity = Depends(require_workspace_member),  # noqa: B008 (spec style)
    ) -> dict[str, str]:
        return {"user": user.id, "workspace": workspace_id}

    @app.get("/workspace/{workspace_id}/settings")
    async def settings(
        user: Annotated[UserIdentity, Depends(require_workspace_owner)],
    ) -> dict[str, str]:
        return {"user": user.id}

    @app.get("/workspace/{workspace_id}/edit")
    async def edit(
        user: Annotated[UserIdentity, Depends(require_workspace_role("admin", "editor"))],
    ) -> dict[str, str]:
        return {"user": user.id}

    @app.get("/no-workspace-in-path")
    async def misconfigured(
        user: Annotated[UserIdentity, Depends(require_workspace_member)],
    ) -> dict[str, str]:
        return {"user": user.id}

    @app.delete("/documents/{doc_id}")
    async def delete_doc(
        doc_id: str,
        user: UserIdentity = Depends(require_scope("delete", "document", "doc_id")),  # noqa: B008
    ) -> dict[str, bool]:
        return {"deleted": True}

    @app.get("/folders/{folder_id}/documents/{doc_id}")
    async def read_doc(
        user: Annotated[UserIdentity, Depends(require_scope("read", "document", "doc_id"))],
    ) -> dict[str, str]:
        return {"user": user.id}

    @app.get("/files/{file_id}")
    async def wrong_param(
        user: Annotated[UserIdentity, Depends(require_scope("read", "file", "doc_id"))],
    ) -> dict[str, str]:
        return {"user": user.id}

    return app


@pytest.fixture(autouse=True)
def _no_checkers() -> Iterator[None]:
    workspace_access.clear_checker()
    scope_access.clear_checker()
    yield
    workspace_access.clear_checker()
    scope_access.clear_checker()


@pytest.fixture
def logs() -> Iterator[LogLines]:
    """The kernel's JSON log lines written during the test."""
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "app_kernel":
            root.removeHandler(handler)


@pytest.fixture(scope="module")
def app() -> FastAPI:
    """Built once, outside the event loop: building routes is slow in asyncio debug mode."""
    return build_app()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def as_user(user_id: str) -> dict[str, str]:
    return {"X-User": user_id}


def lines_with(lines: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == event]


# --- membership ------------------------------------------------------------------------


async def test_member_passes_and_gets_their_identity(client: httpx.AsyncClient) -> None:
    checker = Workspaces()
    workspace_access.set_checker(checker)

    response = await client.get("/workspace/w1/data", headers=as_user("alice"))

    assert response.status_code == 200
    assert response.json() == {"user": "alice", "workspace": "w1"}
    assert checker.calls == [("is_member", "alice", "w1")]


async def test_non_member_gets_403_problem(client: httpx.AsyncClient, logs: LogLines) -> None:
    workspace_access.set_checker(Workspaces())

    response = await client.get("/workspace/w1/data", headers=as_user("mallory"))

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "You are not a member of this workspace."
    [denied] = lines_with(logs(), "access denied")
    assert denied["level"] == "warning"
    assert (denied["user_id"], denied["workspace_id"], denied["check"]) == (
        "mallory",
        "w1",
        "member",
    )


async def test_member_of_one_workspace_is_refused_another(client: httpx.AsyncClient) -> None:
    """Z1: alice belongs to w1, not w2."""
    workspace_access.set_checker(Workspaces())

    assert (await client.get("/workspace/w1/data", headers=as_user("alice"))).status_code == 200
    assert (await client.get("/workspace/w2/data", headers=as_user("alice"))).status_code == 403


async def test_workspace_id_comes_from_the_path_only(client: httpx.AsyncClient) -> None:
    checker = Workspaces()
    workspace_access.set_checker(checker)

    response = await client.get(
        "/workspace/w2/data",
        params={"workspace_id": "w1"},
        headers={**as_user("alice"), "X-Workspace-ID": "w1"},
    )

    assert response.status_code == 403
    assert checker.calls == [("is_member", "alice", "w2")]


async def test_unauthenticated_caller_gets_401_before_any_check(
    client: httpx.AsyncClient,
) -> None:
    checker = Workspaces()
    workspace_access.set_checker(checker)

    response = await client.get("/workspace/w1/data")

    assert response.status_code == 401
    assert checker.calls == []


# --- owner and roles -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "status"),
    [("olga", 200), ("alice", 403), ("mallory", 403)],
)
async def test_owner_route(client: httpx.AsyncClient, user: str, status: int) -> None:
    workspace_access.set_checker(Workspaces())

    response = await client.get("/workspace/w1/settings", headers=as_user(user))

    assert response.status_code == status


@pytest.mark.parametrize(
    ("user", "status"),
    [
        ("olga", 200),  # owner without a member role: owners always pass
        ("alice", 200),  # editor
        ("bob", 403),  # viewer
        ("carol", 403),  # admin, but of w2
        ("mallory", 403),  # stranger
    ],
)
async def test_role_route(client: httpx.AsyncClient, user: str, status: int) -> None:
    workspace_access.set_checker(Workspaces())

    response = await client.get("/workspace/w1/edit", headers=as_user(user))

    assert response.status_code == status
    if status == 403:
        assert response.json()["detail"] == "This needs one of the workspace roles: admin, editor."


async def test_role_of_a_non_member_does_not_count(client: httpx.AsyncClient) -> None:
    class RoleWithoutMembership(Workspaces):
        async def is_member(self, user_id: str, workspace_id: str) -> bool:
            return False

        async def get_role(self, user_id: str, workspace_id: str) -> str | None:
            return "admin"

    workspace_access.set_checker(RoleWithoutMembership())

    response = await client.get("/workspace/w1/edit", headers=as_user("alice"))

    assert response.status_code == 403


def test_require_workspace_role_needs_role_names() -> None:
    with pytest.raises(ValueError, match="role names"):
        require_workspace_role()
    with pytest.raises(ValueError, match="role names"):
        require_workspace_role("admin", "")


# --- failing closed --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/workspace/w1/data", "/workspace/w1/settings", "/workspace/w1/edit"]
)
async def test_no_checker_is_500_with_the_call_to_make(
    client: httpx.AsyncClient, logs: LogLines, path: str
) -> None:
    response = await client.get(path, headers=as_user("alice"))

    assert response.status_code == 500
    assert "workspace_access.set_checker" in response.json()["detail"]
    [line] = lines_with(logs(), "access check with no checker registered; denying")
    assert line["level"] == "error"
    assert "workspace_access.set_checker" in line["error"]


async def test_no_scope_checker_is_500(client: httpx.AsyncClient, logs: LogLines) -> None:
    response = await client.delete("/documents/d1", headers=as_user("alice"))

    assert response.status_code == 500
    assert "scope_access.set_checker" in response.json()["detail"]
    assert lines_with(logs(), "access check with no checker registered; denying")


@pytest.mark.parametrize(
    "path", ["/workspace/w1/data", "/workspace/w1/settings", "/workspace/w1/edit", "/documents/d1"]
)
async def test_raising_checker_is_500_with_traceback_logged(
    client: httpx.AsyncClient, logs: LogLines, path: str
) -> None:
    checker = Raising(ConnectionError("membership db unreachable at 10.0.0.5"))
    workspace_access.set_checker(checker)
    scope_access.set_checker(checker)

    method = "DELETE" if path.startswith("/documents") else "GET"
    response = await client.request(method, path, headers=as_user("olga"))

    assert response.status_code == 500
    assert "10.0.0.5" not in response.text
    assert response.json()["detail"] == "The access check failed."
    [line] = lines_with(logs(), "access checker failed; denying")
    assert line["level"] == "error"
    assert line["user_id"] == "olga"
    assert "Traceback" in line["exception"]
    assert "ConnectionError: membership db unreachable" in line["exception"]


async def test_checker_timeout_is_500(client: httpx.AsyncClient, logs: LogLines) -> None:
    class Slow(Workspaces):
        async def is_member(self, user_id: str, workspace_id: str) -> bool:
            await asyncio.sleep(5)
            return True

    workspace_access.set_checker(Slow(), timeout_seconds=0.01)

    response = await client.get("/workspace/w1/data", headers=as_user("alice"))

    assert response.status_code == 500
    [line] = lines_with(logs(), "access checker failed; denying")
    assert "TimeoutError" in line["exception"]


@pytest.mark.parametrize("answer", [1, "true", None, [True], {"ok": True}])
@pytest.mark.parametrize(
    "path", ["/workspace/w1/data", "/workspace/w1/settings", "/workspace/w1/edit", "/documents/d1"]
)
async def test_non_bool_answers_deny(client: httpx.AsyncClient, answer: Any, path: str) -> None:
    checker = Answering(answer)
    workspace_access.set_checker(checker)
    scope_access.set_checker(checker)

    method = "DELETE" if path.startswith("/documents") else "GET"
    response = await client.request(method, path, headers=as_user("alice"))

    assert response.status_code == 403


async def test_http_exception_from_the_checker_is_passed_on(client: httpx.AsyncClient) -> None:
    """An app may answer 404 to hide that a workspace exists."""
    workspace_access.set_checker(Raising(HTTPException(404, "No such workspace.")))

    response = await client.get("/workspace/w9/data", headers=as_user("alice"))

    assert response.status_code == 404
    assert response.json()["detail"] == "No such workspace."


async def test_route_without_the_path_parameter_is_500(
    client: httpx.AsyncClient, logs: LogLines
) -> None:
    workspace_access.set_checker(Answering(True))

    response = await client.get("/no-workspace-in-path", headers=as_user("alice"))

    assert response.status_code == 500
    [line] = lines_with(logs(), "access dependency on a route without its path parameter")
    assert (line["parameter"], line["route"]) == ("workspace_id", "/no-workspace-in-path")


# --- scopes ----------------------------------------------------------------------------


async def test_scope_granted(client: httpx.AsyncClient) -> None:
    checker = Documents()
    scope_access.set_checker(checker)

    response = await client.delete("/documents/d1", headers=as_user("alice"))

    assert response.status_code == 200
    assert response.json() == {"deleted": True}
    assert checker.calls == [("alice", "delete", "document", "d1")]


async def test_scope_denied_is_403_insufficient_scope(
    client: httpx.AsyncClient, logs: LogLines
) -> None:
    scope_access.set_checker(Documents())

    response = await client.delete("/documents/d2", headers=as_user("alice"))

    assert response.status_code == 403
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    assert response.json()["detail"] == "You may not delete this document."
    [line] = lines_with(logs(), "access denied")
    assert (line["action"], line["resource_type"], line["resource_id"]) == (
        "delete",
        "document",
        "d2",
    )


async def test_scope_reads_the_named_path_parameter(client: httpx.AsyncClient) -> None:
    checker = Documents()
    scope_access.set_checker(checker)

    response = await client.get("/folders/f1/documents/d7", headers=as_user("bob"))

    assert response.status_code == 200
    assert checker.calls == [("bob", "read", "document", "d7")]


async def test_scope_with_a_missing_path_parameter_is_500(client: httpx.AsyncClient) -> None:
    checker = Documents()
    scope_access.set_checker(checker)

    response = await client.get("/files/f1", headers=as_user("alice"))

    assert response.status_code == 500
    assert checker.calls == []


@pytest.mark.parametrize(
    "args",
    [("", "document", "doc_id"), ("delete", "", "doc_id"), ("delete", "document", "")],
)
def test_require_scope_needs_non_empty_arguments(args: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError, match="require_scope"):
        require_scope(*args)
