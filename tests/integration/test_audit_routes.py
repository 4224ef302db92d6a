"""GET /audit: admin-only, filtered, paginated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app_kernel.db.engine import Database
from app_kernel.observability.audit import AuditEvent, AuditLogger, SqlAuditStore
from app_kernel.observability.audit_routes import audit_router
from app_kernel.web.problems import http_exception_handler, validation_exception_handler

ADMIN = {"Authorization": "Bearer t", "X-Test-Admin": "1"}


async def fake_admin(
    authorization: Annotated[str | None, Header()] = None,
    x_test_admin: Annotated[str | None, Header()] = None,
) -> None:
    """401 without credentials, 403 unless X-Test-Admin is set."""
    if authorization is None:
        raise HTTPException(401, "Authentication required.", {"WWW-Authenticate": "Bearer"})
    if x_test_admin is None:
        raise HTTPException(403, "This action needs an admin.")


@pytest.fixture
async def audit(sql_database_url: str) -> AsyncIterator[AuditLogger]:
    database = Database(sql_database_url)
    await database.open()
    try:
        yield AuditLogger(SqlAuditStore(database))
    finally:
        await database.close()


@pytest.fixture
def app() -> FastAPI:
    """Built outside the event loop: building routes is slow in asyncio debug mode."""
    app = FastAPI()
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.include_router(audit_router("/audit", fake_admin))
    return app


@pytest.fixture
async def client(app: FastAPI, audit: AuditLogger) -> AsyncIterator[httpx.AsyncClient]:
    app.state.app_kernel = SimpleNamespace(audit=audit)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def _log_spaced(audit: AuditLogger, count: int, **fields: Any) -> list[AuditEvent]:
    events = []
    for n in range(count):
        events.append(await audit.log(f"step.{n}", **fields))
        await asyncio.sleep(0.002)
    return events


async def test_anonymous_caller_gets_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/audit")

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_non_admin_gets_403_and_no_events(
    client: httpx.AsyncClient, audit: AuditLogger
) -> None:
    await audit.log("secret.thing", actor_id="u1")

    response = await client.get("/audit", headers={"Authorization": "Bearer t"})

    assert response.status_code == 403
    assert "secret.thing" not in response.text


async def test_admin_lists_events_newest_first(
    client: httpx.AsyncClient, audit: AuditLogger
) -> None:
    events = await _log_spaced(audit, 3, actor_id="u1")

    response = await client.get("/audit", headers=ADMIN)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert [item["id"] for item in body["items"]] == [e.id for e in reversed(events)]
    assert body["items"][0] == events[-1].to_dict()
    assert (body["limit"], body["offset"], body["next_offset"]) == (100, 0, None)


async def test_pages_chain_through_next_offset(
    client: httpx.AsyncClient, audit: AuditLogger
) -> None:
    events = await _log_spaced(audit, 5)
    expected = [e.id for e in reversed(events)]

    seen: list[str] = []
    offsets: list[int | None] = []
    offset: int | None = 0
    while offset is not None:
        response = await client.get("/audit", params={"limit": 2, "offset": offset}, headers=ADMIN)
        body = response.json()
        seen.extend(item["id"] for item in body["items"])
        offset = body["next_offset"]
        offsets.append(offset)

    assert seen == expected
    assert offsets == [2, 4, None]


async def test_exactly_full_last_page_has_no_next_offset(
    client: httpx.AsyncClient, audit: AuditLogger
) -> None:
    await _log_spaced(audit, 2)

    body = (await client.get("/audit", params={"limit": 2}, headers=ADMIN)).json()

    assert len(body["items"]) == 2
    assert body["next_offset"] is None


async def test_filters_are_applied(client: httpx.AsyncClient, audit: AuditLogger) -> None:
    await audit.log("doc.delete", actor_id="alice", resource_type="document", resource_id="d1")
    await audit.log("doc.delete", status="failure", actor_id="bob", resource_type="document")
    await audit.log("doc.read", actor_id="alice", resource_type="document", resource_id="d2")

    async def actors(**params: str) -> list[tuple[str, str]]:
        response = await client.get("/audit", params=params, headers=ADMIN)
        assert response.status_code == 200
        return sorted((i["action"], i["actor_id"]) for i in response.json()["items"])

    assert await actors(actor_id="alice") == [("doc.delete", "alice"), ("doc.read", "alice")]
    assert await actors(action="doc.delete", status="failure") == [("doc.delete", "bob")]
    assert await actors(resource_type="document", resource_id="d2") == [("doc.read", "alice")]


async def test_time_bounds_accept_iso_datetimes_with_offsets(
    client: httpx.AsyncClient, audit: AuditLogger
) -> None:
    first, second, third = await _log_spaced(audit, 3)
    after = first.timestamp.astimezone(tz=None).isoformat()  # the machine's zone
    before = (third.timestamp - timedelta(microseconds=1)).isoformat()

    response = await client.get("/audit", params={"after": after, "before": before}, headers=ADMIN)

    assert [item["id"] for item in response.json()["items"]] == [second.id]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "many"},
        {"offset": "-1"},
        {"offset": str(2**63)},  # past what the database takes
        {"after": "yesterday"},
        {"after": "0001-01-01T00:00:00+05:00"},  # before year 1 in UTC
        {"before": "9999-12-31T23:00:00-05:00"},  # after year 9999 in UTC
        {"actor_id": "x" * 1025},
    ],
)
async def test_bad_query_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/audit", params=params, headers=ADMIN)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_filter_holding_nul_is_searched_not_refused(
    client: httpx.AsyncClient, audit: AuditLogger
) -> None:
    """PostgreSQL cannot hold NUL; the filter is searched as the logger stored it."""
    await audit.log("file.read", resource_id="report\x00.pdf")

    response = await client.get("/audit", params={"resource_id": "report\x00.pdf"}, headers=ADMIN)

    assert response.status_code == 200, response.text
    assert [e["resource_id"] for e in response.json()["items"]] == ["report\ufffd.pdf"]


async def test_limit_of_1000_is_accepted(client: httpx.AsyncClient, audit: AuditLogger) -> None:
    await audit.log("x.y")

    response = await client.get("/audit", params={"limit": 1000}, headers=ADMIN)

    assert response.status_code == 200
    assert response.json()["limit"] == 1000
    assert len(response.json()["items"]) == 1
