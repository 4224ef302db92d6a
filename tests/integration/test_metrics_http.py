"""GET /metrics over HTTP: protection modes, built-in HTTP metrics, bounded labels,
the series cap, scraping off the event loop and the trace id in logs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse

from _app_factory import access_lines, build_app, serve, settings_for
from _auth_helpers import (
    AUTH,
    add_user,
    assert_problem,
    assert_unauthorized,
    auth_app,
    bearer,
    client,
    collector_paused,  # noqa: F401 - autouse fixture
    kernel_settings,
    login,
    running,
)
from app_kernel import init_app_kernel
from app_kernel.kernel import Kernel
from app_kernel.observability import current_trace_id, get_metrics
from app_kernel.reliability import rate_limit
from app_kernel.settings import FeatureSettings, HttpSettings, ObservabilitySettings

METRICS_TOKEN = "prometheus-scrape-token-0123456789"
PUBLIC = FeatureSettings(protect_metrics="none")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


async def scrape(http: httpx.AsyncClient, **headers: str) -> Samples:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    # Parsing a large exposition is slow too: off the loop, like the server's render.
    return await asyncio.to_thread(parse, response.text)


async def get(http: httpx.AsyncClient, path: str) -> None:
    """One request, then a turn of the loop: the in-process transport never yields, so
    a long run of requests would otherwise count as one blocking callback."""
    await http.get(path)
    await asyncio.sleep(0)


# --- protection ------------------------------------------------------------------------


class TestAdminProtection:
    """protect_metrics="admin": admin credentials or the metrics bearer token."""

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        settings = kernel_settings(tmp_path)
        observability = ObservabilitySettings(
            metrics_token_hash=hashlib.sha256(METRICS_TOKEN.encode()).hexdigest()
        )
        return auth_app(settings.model_copy(update={"observability": observability}))

    @pytest.fixture
    async def http(self, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
        async with running(app) as kernel, client(app) as http:
            await add_user(kernel, "root", role="admin")
            await add_user(kernel, "bob")
            yield http

    async def test_admin_token_reads_metrics(self, http: httpx.AsyncClient) -> None:
        pair = await login(http, "root")
        await scrape(http, **bearer(pair["access_token"]))

    async def test_non_admin_gets_403(self, http: httpx.AsyncClient) -> None:
        pair = await login(http, "bob")
        assert_problem(await http.get("/metrics", headers=bearer(pair["access_token"])), 403)

    async def test_anonymous_gets_401_with_bearer_challenge(self, http: httpx.AsyncClient) -> None:
        assert_unauthorized(await http.get("/metrics"), presented=False)

    async def test_metrics_token_reads_metrics(self, http: httpx.AsyncClient) -> None:
        await scrape(http, **bearer(METRICS_TOKEN))

    async def test_wrong_token_gets_401(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/metrics", headers=bearer(METRICS_TOKEN + "x"))
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")

    def test_token_from_environment_is_hashed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KERNEL_METRICS_TOKEN", METRICS_TOKEN)
        settings = ObservabilitySettings()
        assert settings.metrics_token_hash == hashlib.sha256(METRICS_TOKEN.encode()).hexdigest()
        assert METRICS_TOKEN not in repr(settings)


class TestInternalProtection:
    """protect_metrics="internal": loopback and private peers by the trusted-proxy rule."""

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        return build_app(
            settings_for(
                tmp_path,
                features=FeatureSettings(protect_metrics="internal"),
                http=HttpSettings(trusted_proxies=("10.0.0.1",)),
            )
        )

    @pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.7", "::1"])
    async def test_internal_peers_read_metrics(self, app: FastAPI, ip: str) -> None:
        async with running(app), client(app, ip) as http:
            await scrape(http)

    async def test_public_peer_gets_403(self, app: FastAPI) -> None:
        async with running(app), client(app, "198.18.0.1") as http:
            assert_problem(await http.get("/metrics"), 403)

    async def test_spoofed_forwarded_for_from_untrusted_peer_gets_403(self, app: FastAPI) -> None:
        async with running(app), client(app, "198.18.0.1") as http:
            headers = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "10.0.0.5"}
            assert_problem(await http.get("/metrics", headers=headers), 403)

    async def test_public_client_behind_trusted_proxy_gets_403(self, app: FastAPI) -> None:
        async with running(app), client(app, "10.0.0.1") as http:
            headers = {"X-Forwarded-For": "198.18.0.1"}
            assert_problem(await http.get("/metrics", headers=headers), 403)


class TestNoProtection:
    async def test_public(self, tmp_path: Path) -> None:
        app = await asyncio.to_thread(build_app, settings_for(tmp_path, features=PUBLIC))
        async with running(app), client(app, "198.18.0.1") as http:
            await scrape(http)

    async def test_disabled(self, tmp_path: Path) -> None:
        settings = settings_for(tmp_path, features=FeatureSettings(enable_metrics=False))
        app = await asyncio.to_thread(build_app, settings)
        async with running(app), client(app) as http:
            assert (await http.get("/metrics")).status_code == 404


# --- HTTP instrumentation --------------------------------------------------------------


@pytest.fixture
def public_app(tmp_path: Path) -> FastAPI:
    return build_app(settings_for(tmp_path, features=PUBLIC))


class TestHttpMetrics:
    """Every request is counted with bounded labels, errors included."""

    async def test_counts_outcomes_by_route_template(self, public_app: FastAPI) -> None:
        async with serve(public_app) as http:
            for i in range(3):
                await http.get(f"/api/v1/items/{i}")
            await http.get("/api/v1/boom")
            await http.get("/api/v1/teapot")
            await http.post("/api/v1/signup", json={})
            await http.request("BREW", "/api/v1/items/1")
            got = await scrape(http)
        requests = series(got, "http_requests_total")
        item = "/api/v1/items/{item_id}"
        assert requests[(("method", "GET"), ("route", item), ("status_class", "2xx"))] == 3
        assert (
            requests[(("method", "GET"), ("route", "/api/v1/boom"), ("status_class", "5xx"))] == 1
        )
        assert (
            requests[(("method", "GET"), ("route", "/api/v1/teapot"), ("status_class", "4xx"))] == 1
        )
        assert (
            requests[(("method", "POST"), ("route", "/api/v1/signup"), ("status_class", "4xx"))]
            == 1
        )
        assert (("method", "OTHER"), ("route", item), ("status_class", "4xx")) in requests
        durations = series(got, "http_request_duration_seconds_count")
        assert durations[(("method", "GET"), ("route", item))] == 3
        # The scrape itself is left out of the in-flight gauge.
        assert got[("http_requests_in_flight", ())] == 0

    async def test_labels_stay_bounded_under_many_raw_paths(self, public_app: FastAPI) -> None:
        async with serve(public_app) as http:
            for i in range(600):
                await get(http, f"/api/v1/items/{i}")
            for i in range(400):
                await get(http, f"/scanner/probe-{i}.php")
            got = await scrape(http)
        routes = {dict(labels)["route"] for labels in series(got, "http_requests_total")}
        assert routes == {"/api/v1/items/{item_id}", "__unmatched__"}
        requests = series(got, "http_requests_total")
        unmatched = (("method", "GET"), ("route", "__unmatched__"), ("status_class", "4xx"))
        assert requests[unmatched] == 400

    async def test_included_routers_are_labelled_with_their_whole_template(
        self, tmp_path: Path
    ) -> None:
        """FastAPI 0.137+ keeps included routes without their include prefix: a
        parameter in that prefix must not reach the label, and routes declared
        as ``""`` must not all be labelled ``""``."""
        app = FastAPI()
        org_items = APIRouter(prefix="/items")

        @org_items.get("/{item_id}")
        async def org_item(org_id: str, item_id: int) -> dict[str, str]:
            return {}

        bare_lists = [APIRouter(), APIRouter()]
        for router in bare_lists:

            @router.get("")
            async def listing() -> list[str]:
                return []

        async def plain(request: Request) -> PlainTextResponse:
            return PlainTextResponse("plain")

        bare_lists[0].add_route("/plain/{n}", plain)
        inner = APIRouter(prefix="/inner/{k}")

        @inner.get("/leaf")
        async def leaf(o: str, k: str) -> dict[str, str]:
            return {}

        outer = APIRouter()
        outer.include_router(inner, prefix="/outer/{o}")
        app.include_router(org_items, prefix="/api/orgs/{org_id}")
        app.include_router(bare_lists[0], prefix="/api/widgets")
        app.include_router(bare_lists[1], prefix="/api/gadgets")
        app.include_router(outer, prefix="/api")
        await asyncio.to_thread(init_app_kernel, app, settings_for(tmp_path, features=PUBLIC))
        async with serve(app) as http:
            for i in range(300):
                await get(http, f"/api/orgs/org-{i}/items/{i}")
            for path in ("/api/widgets", "/api/gadgets", "/api/widgets/plain/1"):
                await get(http, path)
            await get(http, "/api/outer/a/inner/b/leaf")
            got = await scrape(http)
        requests = {
            dict(labels)["route"]: value
            for labels, value in series(got, "http_requests_total").items()
        }
        assert requests == {
            "/api/orgs/{org_id}/items/{item_id}": 300,
            "/api/widgets": 1,
            "/api/gadgets": 1,
            "/api/widgets/plain/{n}": 1,
            "/api/outer/{o}/inner/{k}/leaf": 1,
        }

    async def test_series_cap_drops_and_counts(self, tmp_path: Path) -> None:
        observability = ObservabilitySettings(metrics_max_series_per_metric=2)
        settings = settings_for(tmp_path, features=PUBLIC, observability=observability)
        app = await asyncio.to_thread(build_app, settings)
        async with serve(app) as http:
            await http.get("/api/v1/items/1")
            await http.get("/api/v1/teapot")
            await http.get("/api/v1/boom")
            await http.get("/nowhere")
            got = await scrape(http)
        assert len(series(got, "http_requests_total")) == 2
        dropped = series(got, "app_kernel_metrics_dropped_series_total")
        assert dropped[(("metric", "http_requests"),)] == 2
        assert dropped[(("metric", "http_request_duration_seconds"),)] == 2


class TestAppMetrics:
    async def test_get_metrics_is_the_kernels_facade(self, tmp_path: Path) -> None:
        router = APIRouter()
        seen = []

        @router.post("/orders")
        async def order() -> dict[str, str]:
            seen.append(get_metrics())
            get_metrics().increment("shop.orders", tags={"plan": "pro"})
            return {}

        app = FastAPI()
        app.include_router(router)
        settings = settings_for(tmp_path, features=PUBLIC)
        kernel = await asyncio.to_thread(init_app_kernel, app, settings)
        assert isinstance(kernel, Kernel)
        async with serve(app) as http:
            await http.post("/orders")
            await http.post("/orders")
            got = await scrape(http)
        assert got[("shop_orders_total", (("plan", "pro"),))] == 2
        assert seen == [kernel.metrics, kernel.metrics]


@pytest.fixture
def many_routes_app(tmp_path: Path) -> FastAPI:
    # Routes on the app itself: FastAPI 0.16x builds an included router's
    # routes lazily on the first request (0.1 s for 500 of them, on the loop).
    app = FastAPI()
    for n in range(500):

        async def endpoint() -> None:
            return None

        app.add_api_route(f"/r{n}/{{x}}", endpoint, methods=["GET"])
    init_app_kernel(app, settings_for(tmp_path, features=PUBLIC, observability=_quiet()))
    return app


def _quiet() -> ObservabilitySettings:
    return ObservabilitySettings(access_log=False, log_level="WARNING")


_REQUEST_ROUTES = re.compile(r'^http_requests_total\{[^}]*route="([^"]*)"', re.MULTILINE)


class TestScrapeOffTheLoop:
    """Rendering 500 routes' series takes about 0.1 s of CPU: it runs in a worker thread,
    and the root conftest's guard fails the test if a callback blocks the loop."""

    async def test_large_scrape_does_not_block(
        self, many_routes_app: FastAPI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        metrics = many_routes_app.state.app_kernel.metrics
        render = metrics.render
        threads: list[int] = []

        def spy(accept: str = "") -> tuple[bytes, str]:
            threads.append(threading.get_ident())
            return render(accept)

        monkeypatch.setattr(metrics, "render", spy)
        async with serve(many_routes_app) as http:
            for n in range(500):
                await get(http, f"/r{n}/1")
            for _ in range(3):
                response = await http.get("/metrics")
                assert response.status_code == 200
        # A full parse would itself block the loop; the route labels are enough here.
        routes = set(_REQUEST_ROUTES.findall(response.text))
        assert len(routes - {"/metrics"}) == 500
        assert len(threads) == 3
        assert threading.get_ident() not in threads


# --- trace context ---------------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
_HEX32 = re.compile(r"[0-9a-f]{32}")


class TestTraceparent:
    """A valid traceparent's trace id is bound to the request's logs; otherwise a new one."""

    @pytest.fixture
    def traced_app(self, tmp_path: Path) -> FastAPI:
        app = FastAPI()

        @app.get("/trace")
        async def trace() -> dict[str, Any]:
            return {"trace_id": current_trace_id()}

        init_app_kernel(app, settings_for(tmp_path))
        return app

    async def _trace(self, app: FastAPI, headers: dict[str, str]) -> tuple[str, str]:
        stream = io.StringIO()
        async with serve(app, log_stream=stream) as http:
            response = await http.get("/trace", headers=headers)
        (line,) = access_lines(stream)
        return response.json()["trace_id"], line["trace_id"]

    async def test_valid_header_is_carried_into_logs(self, traced_app: FastAPI) -> None:
        header = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        assert await self._trace(traced_app, header) == (TRACE, TRACE)

    @pytest.mark.parametrize(
        "value",
        [
            f"ff-{TRACE}-00f067aa0ba902b7-01",
            f"00-{TRACE}-00f067aa0ba902b7-01-more",
            f"00-{TRACE.upper()}-00f067aa0ba902b7-01",
            f"00-{'0' * 32}-00f067aa0ba902b7-01",
            f"00-{TRACE}-{'0' * 16}-01",
            "garbage",
        ],
    )
    async def test_invalid_header_is_ignored(self, traced_app: FastAPI, value: str) -> None:
        in_handler, logged = await self._trace(traced_app, {"traceparent": value})
        assert in_handler == logged
        assert _HEX32.fullmatch(logged)
        assert logged not in (TRACE, "0" * 32)

    async def test_absent_header_starts_a_new_trace(self, traced_app: FastAPI) -> None:
        first = await self._trace(traced_app, {})
        second = await self._trace(traced_app, {})
        assert first[0] == first[1]
        assert _HEX32.fullmatch(first[1])
        assert first[1] != second[1]
        assert current_trace_id() is None


# --- the kernel's areas ----------------------------------------------------------------


class TestAreaMetrics:
    """Auth, rate limits, stream leases and readiness record into the kernel's metrics."""

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        app = auth_app(kernel_settings(tmp_path, features=PUBLIC))

        @app.get("/limited", dependencies=[Depends(rate_limit(1, 60))])
        async def limited() -> dict[str, str]:
            return {}

        return app

    async def test_auth_events(self, app: FastAPI) -> None:
        async with running(app) as kernel, client(app) as http:
            await add_user(kernel, "alice")
            pair = await login(http, "alice")
            bad = {"username": "alice", "password": "not the password at all"}
            assert (await http.post(f"{AUTH}/login", json=bad)).status_code == 401
            body = {"refresh_token": pair["refresh_token"]}
            assert (await http.post(f"{AUTH}/refresh", json=body)).status_code == 200
            assert (await http.post(f"{AUTH}/refresh", json=body)).status_code == 401
            events = series(await scrape(http), "auth_events_total")
        assert events[(("action", "auth.login"), ("status", "success"))] == 1
        assert events[(("action", "auth.login"), ("status", "failure"))] == 1
        assert events[(("action", "auth.refresh_reuse"), ("status", "failure"))] == 1

    async def test_rate_limit_decisions(self, app: FastAPI) -> None:
        async with running(app), client(app) as http:
            assert (await http.get("/limited")).status_code == 200
            assert (await http.get("/limited")).status_code == 429
            decisions = series(await scrape(http), "ratelimit_decisions_total")
        assert decisions[(("outcome", "allowed"), ("policy", "route"))] == 1
        assert decisions[(("outcome", "rejected"), ("policy", "route"))] == 1

    async def test_stream_lease_events(self, app: FastAPI) -> None:
        async with running(app) as kernel, client(app) as http:
            leases = kernel.stream_leases
            held = [await leases.acquire_stream_lease("u1") for _ in range(6)]
            granted = [lease for lease in held if lease is not None]
            for lease in granted:
                await leases.release_stream_lease("u1", lease)
            events = series(await scrape(http), "stream_leases_events_total")
        assert events[(("event", "acquired"),)] == len(granted) == 5
        assert events[(("event", "rejected"),)] == 1
        assert events[(("event", "released"),)] == 5

    async def test_readiness_checks(self, app: FastAPI) -> None:
        async with running(app), client(app) as http:
            assert (await http.get("/readyz")).status_code == 200
            checks = series(await scrape(http), "readiness_check_ok")
        assert checks == {(("check", "database"),): 1, (("check", "sqlite"),): 1}
