"""WorkspaceAccess, ScopeAccess and check_scope: registering checkers, failing closed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import app_kernel.access as access
from app_kernel.access import (
    AccessNotConfigured,
    ScopeAccess,
    ScopeChecker,
    WorkspaceAccess,
    WorkspaceChecker,
    check_scope,
    scope_access,
    workspace_access,
)
from app_kernel.errors import KernelError


class Workspaces:
    """A WorkspaceChecker answering whatever the test sets."""

    def __init__(self, member: Any = True, owner: Any = False, role: Any = "editor") -> None:
        self.member, self.owner, self.role = member, owner, role
        self.calls: list[tuple[str, str, str]] = []

    async def is_member(self, user_id: str, workspace_id: str) -> bool:
        self.calls.append(("is_member", user_id, workspace_id))
        return self.member  # type: ignore[no-any-return]

    async def is_owner(self, user_id: str, workspace_id: str) -> bool:
        self.calls.append(("is_owner", user_id, workspace_id))
        return self.owner  # type: ignore[no-any-return]

    async def get_role(self, user_id: str, workspace_id: str) -> str | None:
        self.calls.append(("get_role", user_id, workspace_id))
        return self.role  # type: ignore[no-any-return]


class Scopes:
    """A ScopeChecker granting exactly the listed (user, action, type, id) tuples."""

    def __init__(self, *grants: tuple[str, str, str, str]) -> None:
        self.grants = set(grants)

    async def has_scope(
        self, user_id: str, action: str, resource_type: str, resource_id: str
    ) -> bool:
        return (user_id, action, resource_type, resource_id) in self.grants


class Broken:
    async def has_scope(self, *args: str) -> bool:
        msg = "database is down"
        raise ConnectionError(msg)


@pytest.fixture(autouse=True)
def _no_checkers() -> Iterator[None]:
    workspace_access.clear_checker()
    scope_access.clear_checker()
    yield
    workspace_access.clear_checker()
    scope_access.clear_checker()


def test_exports_are_the_specified_sorted_tuple() -> None:
    expected = (
        "AccessNotConfigured",
        "ScopeAccess",
        "ScopeChecker",
        "WorkspaceAccess",
        "WorkspaceChecker",
        "check_scope",
        "require_scope",
        "require_workspace_member",
        "require_workspace_owner",
        "require_workspace_role",
        "scope_access",
        "workspace_access",
    )
    assert access.__all__ == expected
    assert all(hasattr(access, name) for name in expected)


def test_protocols_describe_the_fakes() -> None:
    """Type-checked: the fakes satisfy the protocols structurally."""
    workspaces: WorkspaceChecker = Workspaces()
    scopes: ScopeChecker = Scopes()
    assert workspaces is not None
    assert scopes is not None


def test_missing_checker_names_the_call_to_make() -> None:
    with pytest.raises(AccessNotConfigured, match=r"workspace_access\.set_checker"):
        _ = workspace_access.checker
    with pytest.raises(AccessNotConfigured, match=r"scope_access\.set_checker"):
        _ = scope_access.checker
    assert issubclass(AccessNotConfigured, KernelError)
    assert not workspace_access.is_configured


def test_set_checker_rejects_objects_missing_methods() -> None:
    class Half:
        async def is_member(self, user_id: str, workspace_id: str) -> bool:
            return True

    with pytest.raises(TypeError, match=r"is_owner, get_role"):
        workspace_access.set_checker(Half())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"has_scope"):
        scope_access.set_checker(Half())  # type: ignore[arg-type]
    assert not workspace_access.is_configured


def test_set_checker_registers_and_replaces() -> None:
    first, second = Workspaces(), Workspaces()
    workspace_access.set_checker(first)
    assert workspace_access.checker is first
    workspace_access.set_checker(second)
    assert workspace_access.checker is second
    assert WorkspaceAccess(second).checker is second
    assert ScopeAccess(Scopes()).is_configured


async def test_workspace_answers_pass_through_by_position() -> None:
    checker = Workspaces(member=True, owner=False, role="viewer")
    workspace_access.set_checker(checker)

    assert await workspace_access.is_member("u1", "w1") is True
    assert await workspace_access.is_owner("u1", "w1") is False
    assert await workspace_access.get_role("u1", "w1") == "viewer"
    assert checker.calls == [
        ("is_member", "u1", "w1"),
        ("is_owner", "u1", "w1"),
        ("get_role", "u1", "w1"),
    ]


@pytest.mark.parametrize("answer", [1, "yes", None, [True], object()])
async def test_non_bool_answers_deny(answer: Any) -> None:
    workspace_access.set_checker(Workspaces(member=answer, owner=answer, role=answer))

    assert await workspace_access.is_member("u1", "w1") is False
    assert await workspace_access.is_owner("u1", "w1") is False
    role = await workspace_access.get_role("u1", "w1")
    assert role is None or role == "yes"


async def test_checks_without_a_checker_raise() -> None:
    with pytest.raises(AccessNotConfigured):
        await workspace_access.is_member("u1", "w1")
    with pytest.raises(AccessNotConfigured):
        await check_scope("u1", "read", "document", "d1")


async def test_check_scope_asks_the_registered_checker() -> None:
    scope_access.set_checker(Scopes(("u1", "write", "project", "p1")))

    assert await check_scope("u1", "write", "project", "p1") is True
    assert await check_scope("u1", "write", "project", "p2") is False
    assert await check_scope("u2", "write", "project", "p1") is False
    assert await check_scope("u1", "delete", "project", "p1") is False


async def test_check_scope_propagates_checker_errors() -> None:
    scope_access.set_checker(Broken())

    with pytest.raises(ConnectionError):
        await check_scope("u1", "write", "project", "p1")


async def test_slow_checker_times_out() -> None:
    class Slow:
        async def has_scope(self, *args: str) -> bool:
            await asyncio.sleep(5)
            return True

    scope_access.set_checker(Slow(), timeout_seconds=0.01)

    with pytest.raises(TimeoutError):
        await check_scope("u1", "write", "project", "p1")


async def test_sync_checker_is_an_error_not_a_grant() -> None:
    class Sync:
        def has_scope(self, *args: str) -> bool:
            return True

    scope_access.set_checker(Sync())  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="must be async"):
        await check_scope("u1", "write", "project", "p1")
