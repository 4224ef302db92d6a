"""The kernel's HTTP layer, driven through httpx's ASGI transport with the lifespan running.

Middleware order, security headers, request ids, the body limit, RFC 9457 problems on
every error path, allowed hosts and CORS.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from _app_factory import (
    PROBLEM_KEYS,
    SECRET,
    SECURITY_HEADERS,
    access_lines,
    build_app,
    serve,
    settings_for,
)
from app_kernel.settings import AuthSettings, HttpSettings

MAX_BODY = 64
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    """Debug mode, a 64-byte body limit, two allowed host forms and one CORS origin."""
    http = HttpSettings(
        max_body_bytes=MAX_BODY,
        allowed_hosts=("testserver", "*.example.com"),
        cors_origins=("https://app.example.com",),
    )
    return build_app(settings_for(tmp_path, http=http))


@pytest.fixture
def prod_app(tmp_path: Path) -> FastAPI:
    """Outside debug mode (so 500s must not carry the exception text)."""
    return build_app(settings_for(tmp_path, debug=False, auth=AuthSettings(token_secret=SECRET)))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    """``response`` is an RFC 9457 problem with ``status`` and the response's request id."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class TestMiddlewareOrder:
    """Errors from every layer still pass through the request-id and header middleware."""

    async def test_error_responses_carry_request_id_headers_and_an_access_line(
        self, app: FastAPI
    ) -> None:
        log = io.StringIO()
        async with serve(app, log_stream=log) as client:
            responses = [
                await client.get("/api/v1/boom"),  # raised in a route
                await client.post("/api/v1/upload", content=b"x" * (MAX_BODY + 1)),
                await client.get("/healthz", headers={"Host": "evil.test"}),
                await client.get("/nowhere"),
            ]
        assert [r.status_code for r in responses] == [500, 413, 400, 404]
        for response in responses:
            assert_problem(response, response.status_code)
            missing = [h for h in SECURITY_HEADERS if h not in response.headers]
            assert not missing, f"{response.request.url}: missing {missing}"
        logged = {(line["request_id"], line["status"]) for line in access_lines(log)}
        for response in responses:
            assert (response.headers["x-request-id"], response.status_code) in logged

    async def test_unhandled_exception_is_logged_with_the_request_id(self, app: FastAPI) -> None:
        log = io.StringIO()
        async with serve(app, log_stream=log) as client:
            response = await client.get("/api/v1/boom")
        errors = [line for line in access_lines(log) if line["status"] == 500]
        assert errors
        text = log.getvalue()
        assert "unhandled exception" in text
        assert "RuntimeError" in text
        assert response.headers["x-request-id"] in text


class TestSecurityHeaders:
    async def test_each_header_has_its_value(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/items/1")
        assert response.status_code == 200
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["cross-origin-resource-policy"] == "same-origin"
        permissions = headers["permissions-policy"]
        for feature in ("camera=()", "microphone=()", "geolocation=()"):
            assert feature in permissions

    async def test_api_responses_get_the_strict_csp(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/items/1")
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src" not in csp

    async def test_no_hsts_over_http(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert "strict-transport-security" not in response.headers

    async def test_hsts_over_https(self, app: FastAPI) -> None:
        async with serve(app, base_url="https://api.example.com") as client:
            response = await client.get("/healthz")
        assert response.status_code == 200
        hsts = response.headers["strict-transport-security"]
        max_age = re.search(r"max-age=(\d+)", hsts)
        assert max_age is not None
        assert int(max_age.group(1)) >= 31_536_000


class TestRequestId:
    async def test_good_incoming_id_is_reused_and_echoed(self, app: FastAPI) -> None:
        log = io.StringIO()
        async with serve(app, log_stream=log) as client:
            response = await client.get("/nowhere", headers={"X-Request-ID": "abc-123_x.7"})
        assert response.headers["x-request-id"] == "abc-123_x.7"
        assert response.json()["request_id"] == "abc-123_x.7"
        assert [line["request_id"] for line in access_lines(log)] == ["abc-123_x.7"]

    async def test_absent_id_is_generated(self, client: httpx.AsyncClient) -> None:
        first = await client.get("/healthz")
        second = await client.get("/healthz")
        ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
        assert all(_VALID_ID.fullmatch(rid) for rid in ids)
        assert ids[0] != ids[1]

    @pytest.mark.parametrize(
        "incoming",
        [
            pytest.param("a\r\nX-Injected: 1", id="crlf"),
            pytest.param("has spaces", id="spaces"),
            pytest.param("caf\u00e9".encode(), id="non-ascii"),
            pytest.param(b"\xff\xfe", id="invalid-utf8"),
            pytest.param("<script>alert(1)</script>", id="script"),
            pytest.param("a" * 129, id="129-chars"),
            pytest.param("b" * 1000, id="1000-chars"),
        ],
    )
    async def test_malformed_or_oversized_id_is_replaced(
        self, client: httpx.AsyncClient, incoming: str | bytes
    ) -> None:
        response = await client.get("/nowhere", headers={"X-Request-ID": incoming})
        rid = response.headers["x-request-id"]
        sent = incoming.decode("latin-1") if isinstance(incoming, bytes) else incoming
        assert rid != sent
        assert _VALID_ID.fullmatch(rid)
        assert response.json()["request_id"] == rid

    async def test_128_characters_are_accepted(self, client: httpx.AsyncClient) -> None:
        incoming = "r" * 127 + "9"
        response = await client.get("/healthz", headers={"X-Request-ID": incoming})
        assert response.headers["x-request-id"] == incoming


class TestBodyLimit:
    async def test_content_length_over_the_limit(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/v1/upload", content=b"x" * (MAX_BODY + 1))
        body = assert_problem(response, 413)
        assert str(MAX_BODY) in str(body["detail"])

    async def test_streamed_body_over_the_limit(self, client: httpx.AsyncClient) -> None:
        chunk = b"y" * (MAX_BODY // 2)
        response = await client.post("/api/v1/upload", content=_chunks(chunk, chunk, chunk))
        assert "content-length" not in response.request.headers
        assert_problem(response, 413)

    async def test_body_at_the_limit_is_accepted(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/v1/upload", content=b"z" * MAX_BODY)
        assert response.status_code == 200
        assert response.json() == {"received": MAX_BODY}

    async def test_streamed_body_under_the_limit_is_accepted(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post("/api/v1/upload", content=_chunks(b"ab", b"cd", b"e"))
        assert "content-length" not in response.request.headers
        assert response.status_code == 200
        assert response.json() == {"received": 5}


class TestProblems:
    """Every error path answers application/problem+json with the request id."""

    async def test_404(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/api/v1/nothing-here"), 404)
        assert body["title"] == "Not Found"

    async def test_405(self, client: httpx.AsyncClient) -> None:
        response = await client.delete("/healthz")
        body = assert_problem(response, 405)
        assert body["title"] == "Method Not Allowed"
        assert "GET" in response.headers["allow"]

    async def test_422_does_not_echo_the_rejected_input(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/v1/signup", json={"username": "ann", "password": "hunter2-pw"}
        )
        body = assert_problem(response, 422)
        errors = body["errors"]
        assert isinstance(errors, list)
        assert [error["loc"] for error in errors] == [["body", "password"]]
        assert "hunter2-pw" not in response.text

    async def test_422_for_a_bad_path_parameter(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/api/v1/items/not-a-number"), 422)
        assert isinstance(body["errors"], list)
        assert body["errors"][0]["loc"] == ["path", "item_id"]

    async def test_http_exception_keeps_status_detail_and_headers(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/api/v1/teapot")
        body = assert_problem(response, 418)
        assert body["detail"] == "short and stout"
        assert response.headers["x-teapot"] == "yes"

    async def test_unhandled_exception_hides_internals(self, prod_app: FastAPI) -> None:
        async with serve(prod_app) as client:
            response = await client.get("/api/v1/boom")
        body = assert_problem(response, 500)
        assert body["title"] == "Internal Server Error"
        for leak in ("RuntimeError", "hunter2", "/srv/internal", "Traceback"):
            assert leak not in response.text

    async def test_debug_mode_adds_the_exception_text(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/api/v1/boom"), 500)
        assert "RuntimeError" in str(body["detail"])
        assert "vault password" in str(body["detail"])


class TestAllowedHosts:
    @pytest.mark.parametrize(
        "host",
        ["evil.test", "example.com", "example.com.evil.io", "notexample.com", "testserver.evil"],
    )
    async def test_unknown_host_gets_a_400_problem(
        self, client: httpx.AsyncClient, host: str
    ) -> None:
        response = await client.get("/healthz", headers={"Host": host})
        body = assert_problem(response, 400)
        assert "Host" in str(body["detail"])

    @pytest.mark.parametrize(
        "host", ["testserver", "api.example.com", "a.b.example.com", "API.Example.com:8443"]
    )
    async def test_allowed_host(self, client: httpx.AsyncClient, host: str) -> None:
        response = await client.get("/healthz", headers={"Host": host})
        assert response.status_code == 200


class TestCors:
    async def test_allowed_origin_is_echoed(self, client: httpx.AsyncClient) -> None:
        origin = "https://app.example.com"
        response = await client.get("/api/v1/items/1", headers={"Origin": origin})
        assert response.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()

    async def test_unhandled_500_still_carries_cors_headers(
        self, client: httpx.AsyncClient
    ) -> None:
        """Without them a browser hides the problem behind an opaque network error."""
        origin = "https://app.example.com"
        response = await client.get("/api/v1/boom", headers={"Origin": origin})
        assert response.status_code == 500
        assert response.headers["access-control-allow-origin"] == origin

    async def test_lookalike_origin_is_not_allowed(self, client: httpx.AsyncClient) -> None:
        response = await client.get(
            "/api/v1/items/1", headers={"Origin": "https://app.example.com.evil.io"}
        )
        assert "access-control-allow-origin" not in response.headers

    async def test_preflight_from_allowed_origin(self, client: httpx.AsyncClient) -> None:
        response = await client.options(
            "/api/v1/signup",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"

    async def test_preflight_from_lookalike_origin(self, client: httpx.AsyncClient) -> None:
        response = await client.options(
            "/api/v1/signup",
            headers={
                "Origin": "https://app.example.com.evil.io",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
