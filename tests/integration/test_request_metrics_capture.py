"""Request metrics capture: the fields of each record, exclusions and a full buffer.

The flush interval is an hour here, so every captured record stays in the
kernel's buffer where the test reads it.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException

from _app_factory import SECRET
from _auth_helpers import API_PREFIX, add_user, bearer, collector_paused, login, running
from app_kernel import init_app_kernel
from app_kernel.kernel import Kernel
from app_kernel.observability.request_metrics import (
    RECORD_FIELDS,
    as_records,
    capture_query_params,
    redact_url_query,
)
from app_kernel.settings import (
    AuthSettings,
    HttpSettings,
    KernelSettings,
    ObservabilitySettings,
    RequestMetricsSettings,
)

__all__ = ("collector_paused",)

PROXY = "10.0.0.5"


def metrics_settings(tmp_path: Path, **request_metrics: Any) -> KernelSettings:
    values: dict[str, Any] = {"enabled": True, "flush_interval_seconds": 3600.0}
    values.update(request_metrics)
    return KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        auth=AuthSettings(
            token_secret=SECRET,
            argon2_time_cost=1,
            argon2_memory_kib=8,
            revocation_cache_seconds=0,
        ),
        http=HttpSettings(trusted_proxies=(PROXY,)),
        observability=ObservabilitySettings(request_metrics=RequestMetricsSettings(**values)),
    )


def build(settings: KernelSettings) -> FastAPI:
    app = FastAPI()

    @app.get(f"{API_PREFIX}/workspaces/{{workspace_id}}/items/{{item_id}}")
    async def get_item(workspace_id: str, item_id: int) -> dict[str, Any]:
        return {"workspace": workspace_id, "item": item_id}

    @app.get(f"{API_PREFIX}/fail")
    async def fail() -> None:
        raise HTTPException(409, "that name is taken " + "x" * 1000)

    @app.get(f"{API_PREFIX}/slowish")
    async def slowish() -> dict[str, bool]:
        await asyncio.sleep(0.05)
        return {"ok": True}

    @app.get("/healthcheck-page")
    async def not_health() -> dict[str, bool]:
        return {"ok": True}

    init_app_kernel(app, settings, api_prefix=API_PREFIX)
    return app


def peer(app: FastAPI, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 4321))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def records(kernel: Kernel) -> list[dict[str, Any]]:
    buffer = kernel.request_metrics.buffer
    return as_records(RECORD_FIELDS, buffer.take(len(buffer)))


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return build(metrics_settings(tmp_path))


async def test_a_request_is_captured_with_every_field(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        before = time.time()
        response = await http.get(
            f"{API_PREFIX}/workspaces/ws-42/items/7",
            params={"q": "shoes", "page": "2", "token": "abc", "api_key": "k", "tag": ["a", "b"]},
            headers={
                "User-Agent": "agent/" + "u" * 600,
                "Referer": "https://example.com/" + "r" * 600,
                "CF-IPCountry": "de",
                "X-Request-ID": "req-123",
                "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
            },
        )
        assert response.status_code == 200
        (record,) = records(kernel)

    assert record["method"] == "GET"
    assert record["path"] == f"{API_PREFIX}/workspaces/ws-42/items/7"
    assert record["route"] == f"{API_PREFIX}/workspaces/{{workspace_id}}/items/{{item_id}}"
    assert record["query_params"] == {
        "q": "shoes",
        "page": "2",
        "token": "[redacted]",
        "api_key": "[redacted]",
        "tag": ["a", "b"],
    }
    assert record["request_id"] == response.headers["x-request-id"]
    assert record["status_code"] == 200
    assert record["error"] is None
    assert 0 <= record["latency_ms"] < 5000
    assert record["client_ip"] == "203.0.113.7"
    assert record["user_agent"] == ("agent/" + "u" * 600)[:512]
    assert len(record["referer"]) == 512
    assert record["user_id"] is None
    assert record["workspace_id"] == "ws-42"
    assert record["country"] == "DE"
    assert record["trace_id"] == TRACE
    assert before - 1 <= record["timestamp"] <= time.time() + 1
    moment = time.gmtime(record["timestamp"])
    assert (record["year"], record["month"], record["day"], record["hour"]) == (
        moment.tm_year,
        moment.tm_mon,
        moment.tm_mday,
        moment.tm_hour,
    )


async def test_errors_carry_the_problem_detail_or_the_status_phrase(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        assert (await http.get(f"{API_PREFIX}/fail")).status_code == 409
        assert (await http.get("/nowhere")).status_code == 404
        assert (await http.get(f"{API_PREFIX}/workspaces/w/items/nan")).status_code == 422
        conflict, missing, invalid = records(kernel)

    assert conflict["status_code"] == 409
    assert conflict["error"] == ("that name is taken " + "x" * 1000)[:512]
    assert conflict["route"] == f"{API_PREFIX}/fail"
    assert missing["status_code"] == 404
    assert missing["route"] == "__unmatched__"
    assert missing["error"]
    assert invalid["status_code"] == 422
    assert invalid["error"]


async def test_latency_is_the_server_time(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        await http.get(f"{API_PREFIX}/slowish")
        (record,) = records(kernel)
    assert record["latency_ms"] >= 45


async def test_a_trusted_proxy_header_is_honoured_and_a_spoof_ignored(app: FastAPI) -> None:
    async with running(app) as kernel:
        async with peer(app, PROXY) as http:
            await http.get(f"{API_PREFIX}/slowish", headers={"X-Forwarded-For": "198.51.100.9"})
        async with peer(app, "203.0.113.50") as http:
            await http.get(f"{API_PREFIX}/slowish", headers={"X-Forwarded-For": "198.51.100.9"})
        via_proxy, spoofed = records(kernel)
    assert via_proxy["client_ip"] == "198.51.100.9"
    assert spoofed["client_ip"] == "203.0.113.50"


async def test_a_bad_country_header_is_not_stored(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        for country in ("XYZ", "1A", ""):
            await http.get(f"{API_PREFIX}/slowish", headers={"CF-IPCountry": country})
        captured = records(kernel)
    assert [r["country"] for r in captured] == [None, None, None]


async def test_the_authenticated_user_is_recorded(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        user = await add_user(kernel, "ada")
        pair = await login(http, "ada")
        records(kernel)
        response = await http.get(f"{API_PREFIX}/auth/me", headers=bearer(pair["access_token"]))
        assert response.status_code == 200, response.text
        (record,) = records(kernel)
    assert record["user_id"] == user["id"]


async def test_excluded_paths_and_paths_below_them_are_not_recorded(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        for path in ("/healthz", "/readyz", "/metrics", "/metrics/requests", "/favicon.ico"):
            await http.get(path)
        await http.get("/healthcheck-page")
        captured = records(kernel)
    assert [r["path"] for r in captured] == ["/healthcheck-page"]


def test_query_params_redaction() -> None:
    params = capture_query_params(
        b"code=1&signature=s&secret=x&password=p&key=k&x-api-key=z&max_tokens=5&passenger=n"
    )
    assert params == {
        "code": "[redacted]",
        "signature": "[redacted]",
        "secret": "[redacted]",
        "password": "[redacted]",
        "key": "[redacted]",
        "x-api-key": "[redacted]",
        "max_tokens": "5",
        "passenger": "n",
    }
    assert capture_query_params(b"") is None
    # The whole key is judged, not the part that is kept.
    long_key = "k" * 200 + "_token"
    assert capture_query_params(f"{long_key}=abc".encode()) == {"k" * 128: "[redacted]"}
    # Percent-encoded keys are judged decoded.
    assert capture_query_params(b"pass%77ord=p&q=1") == {"password": "[redacted]", "q": "1"}


@pytest.mark.parametrize(
    ("referer", "stored"),
    [
        (
            "https://app.example/reset?token=abc&step=2#top",
            "https://app.example/reset?token=[redacted]&step=2#top",
        ),
        (
            "https://app.example/cb?code=xyz&state=s%20t&access%5Ftoken=t",
            "https://app.example/cb?code=[redacted]&state=s%20t&access%5Ftoken=[redacted]",
        ),
        ("https://app.example/page?q=shoes&flag", "https://app.example/page?q=shoes&flag"),
        ("https://app.example/page?password=", "https://app.example/page?password="),
        ("https://app.example/no-query", "https://app.example/no-query"),
        ("not a url ? secret=1", "not a url ? secret=[redacted]"),
    ],
)
def test_referer_query_redaction(referer: str, stored: str) -> None:
    assert redact_url_query(referer) == stored


async def test_the_referer_is_stored_redacted(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        referer = "https://app.example/reset-password?reset_token=s3cret&lang=en"
        response = await http.get(f"{API_PREFIX}/fail", headers={"Referer": referer})
        assert response.status_code == 409
        (record,) = records(kernel)
    assert record["referer"] == "https://app.example/reset-password?reset_token=[redacted]&lang=en"


@pytest.fixture
def tiny_app(tmp_path: Path) -> FastAPI:
    return build(metrics_settings(tmp_path, buffer_size=5))


async def test_a_full_buffer_drops_new_records_without_blocking(tiny_app: FastAPI) -> None:
    async with running(tiny_app) as kernel, peer(tiny_app, "203.0.113.7") as http:
        started = time.perf_counter()
        responses = await asyncio.gather(
            *(http.get(f"{API_PREFIX}/workspaces/w/items/{n}") for n in range(40))
        )
        elapsed = time.perf_counter() - started
        assert all(r.status_code == 200 for r in responses)
        recorder = kernel.request_metrics
        assert len(recorder.buffer) == 5
        assert recorder.buffer.dropped == 35
        exposition, _ = kernel.metrics.render()
        kept = records(kernel)
    assert elapsed < 10
    assert len(kept) == 5
    assert "request_metrics_dropped_total 35.0" in exposition.decode()


async def test_capture_is_off_unless_enabled(tmp_path: Path) -> None:
    settings = metrics_settings(tmp_path, enabled=False)
    app = await asyncio.to_thread(build, settings)
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        await http.get(f"{API_PREFIX}/slowish")
        assert len(kernel.request_metrics.buffer) == 0
        assert (await http.get("/metrics/requests")).status_code == 404


def test_the_manifest_form_enables_capture(tmp_path: Path) -> None:
    from app_kernel.service_config import ServiceConfig, to_kernel_settings

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "observability:\n"
        "  request_metrics:\n"
        "    enabled: true\n"
        "    exclude_paths: [/health, /internal]\n"
        "    batch_size: 250\n"
    )
    settings = to_kernel_settings(ServiceConfig(), name="svc", manifest=manifest)
    request_metrics = settings.observability.request_metrics
    assert request_metrics.enabled
    assert request_metrics.exclude_paths == ("/health", "/internal")
    assert request_metrics.batch_size == 250
    assert request_metrics.buffer_size == 10_000


async def test_a_request_without_traceparent_gets_a_trace_id_of_its_own(app: FastAPI) -> None:
    async with running(app) as kernel, peer(app, "203.0.113.7") as http:
        for _ in range(2):
            await http.get(f"{API_PREFIX}/workspaces/w/items/1")
        first, second = records(kernel)
    assert re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert first["trace_id"] != second["trace_id"]
