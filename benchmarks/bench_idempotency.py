"""Overhead of Idempotency-Key on a POST route, on SQLite and on Redis.

Run: ``python benchmarks/bench_idempotency.py [N]`` (Redis from
``APP_KERNEL_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``; skipped if
it does not answer). Requests go through httpx's ASGITransport in one process,
sequentially, so the figures are per-request latency expressed as rate:

* plain:  the route without idempotency (no header);
* fresh:  a new key each request (claim + complete: two backend operations);
* replay: the same key each request (one claim answering the stored response).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import httpx
import redis
from fastapi import Depends, FastAPI

from app_kernel import KernelSettings, init_app_kernel
from app_kernel.reliability import idempotent_route
from app_kernel.settings import RedisSettings


def build(data_dir: str, redis_url: str | None, prefix: str) -> FastAPI:
    app = FastAPI()

    @app.post("/plain")
    async def plain(body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "echo": body}

    @app.post("/idem", dependencies=[Depends(idempotent_route())])
    async def idem(body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "echo": body}

    settings = KernelSettings(
        debug=True,
        data_dir=data_dir,
        redis=RedisSettings(url=redis_url, key_prefix=prefix),
        observability={"access_log": False, "log_level": "WARNING"},
    )
    init_app_kernel(app, settings)
    return app


async def rate(http: httpx.AsyncClient, path: str, n: int, key: str | None) -> float:
    body = {"amount": 42, "currency": "EUR"}
    start = time.perf_counter()
    for i in range(n):
        headers = {}
        if key == "fresh":
            headers["Idempotency-Key"] = f"k-{i}-{uuid.uuid4().hex}"
        elif key is not None:
            headers["Idempotency-Key"] = key
        response = await http.post(path, json=body, headers=headers)
        assert response.status_code == 200, response.text
    return n / (time.perf_counter() - start)


async def run(name: str, redis_url: str | None, n: int) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as data_dir:
        app = build(data_dir, redis_url, prefix)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as http:
                await rate(http, "/plain", 50, None)  # warm up
                await rate(http, "/idem", 50, "fresh")
                plain = await rate(http, "/plain", n, None)
                fresh = await rate(http, "/idem", n, "fresh")
                replay = await rate(http, "/idem", n, "same-key-0001")
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
    print(
        f"{name:7s} plain {plain:8.0f} req/s | fresh key {fresh:8.0f} req/s "
        f"({fresh / plain:.2f}x) | replay {replay:8.0f} req/s ({replay / plain:.2f}x)"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    asyncio.run(run("sqlite", None, n))
    redis_url = os.environ.get("APP_KERNEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        print(f"redis   skipped: {redis_url} does not answer")
        return
    asyncio.run(run("redis", redis_url, n))


if __name__ == "__main__":
    main()
