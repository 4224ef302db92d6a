"""The access dependencies behind the kernel's real authentication and HTTP layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI

from _auth_helpers import (
    add_user,
    assert_problem,
    bearer,
    client,
    kernel_settings,
    login,
    running,
)
from app_kernel import init_app_kernel
from app_kernel.access import (
    require_scope,
    require_workspace_member,
    scope_access,
    workspace_access,
)
from app_kernel.auth.models import UserIdentity


class Workspaces:
    """alice is a member of w1 and nothing else."""

    def __init__(self) -> None:
        self.alice_id = ""
        self.calls: list[tuple[str, str]] = []

    async def is_member(self, user_id: str, workspace_id: str) -> bool:
        self.calls.append((user_id, workspace_id))
        return (user_id, workspace_id) == (self.alice_id, "w1")

    async def is_owner(self, user_id: str, workspace_id: str) -> bool:
        return False

    async def get_role(self, user_id: str, workspace_id: str) -> str | None:
        return None


class NoScopes:
    async def has_scope(self, *args: str) -> bool:
        return False


@pytest.fixture(autouse=True)
def _no_checkers() -> Iterator[None]:
    workspace_access.clear_checker()
    scope_access.clear_checker()
    yield
    workspace_access.clear_checker()
    scope_access.clear_checker()


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    app = FastAPI()

    @app.get("/workspace/{workspace_id}/data")
    async def data(
        workspace_id: str,
        user: Annotated[UserIdentity, Depends(require_workspace_member)],
    ) -> dict[str, str]:
        return {"user": user.id, "workspace": workspace_id}

    @app.delete("/documents/{doc_id}")
    async def delete_doc(
        user: Annotated[UserIdentity, Depends(require_scope("delete", "document", "doc_id"))],
    ) -> dict[str, bool]:
        return {"deleted": True}

    init_app_kernel(app, kernel_settings(tmp_path), api_prefix="/api/v1")
    return app


async def test_member_non_member_and_anonymous(app: FastAPI) -> None:
    checker = Workspaces()
    workspace_access.set_checker(checker)
    async with running(app) as kernel, client(app) as http:
        record = await add_user(kernel, "alice")
        checker.alice_id = str(record["id"])
        token = (await login(http, "alice"))["access_token"]

        ok = await http.get("/workspace/w1/data", headers=bearer(token))
        other = await http.get("/workspace/w2/data", headers=bearer(token))
        anonymous = await http.get("/workspace/w1/data")

    assert ok.status_code == 200
    assert ok.json() == {"user": checker.alice_id, "workspace": "w1"}
    body = assert_problem(other, 403)
    assert body["request_id"] == other.headers["x-request-id"]
    assert_problem(anonymous, 401)
    assert checker.calls == [(checker.alice_id, "w1"), (checker.alice_id, "w2")]


async def test_missing_checker_is_a_500_problem(app: FastAPI) -> None:
    async with running(app) as kernel, client(app) as http:
        await add_user(kernel, "alice")
        token = (await login(http, "alice"))["access_token"]

        response = await http.get("/workspace/w1/data", headers=bearer(token))

    body = assert_problem(response, 500)
    assert "workspace_access.set_checker" in body["detail"]


async def test_scope_denial_is_a_403_problem_with_insufficient_scope(app: FastAPI) -> None:
    """Z2."""
    scope_access.set_checker(NoScopes())
    async with running(app) as kernel, client(app) as http:
        await add_user(kernel, "alice")
        token = (await login(http, "alice"))["access_token"]

        response = await http.delete("/documents/d1", headers=bearer(token))

    assert_problem(response, 403)
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
