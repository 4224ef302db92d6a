"""The ``redis`` extra is optional: the embedded default runs without the package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.modules["redis"] = None  # as if the extra were not installed
    import httpx
    from fastapi import FastAPI
    from app_kernel import KernelSettings, MissingDependencyError, init_app_kernel

    app = FastAPI()
    init_app_kernel(app, KernelSettings(debug=True, data_dir=sys.argv[1]))

    async def ready() -> int:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return (await client.get("/readyz")).status_code

    print("readyz", asyncio.run(ready()))
    try:
        init_app_kernel(
            FastAPI(),
            KernelSettings(debug=True, data_dir=sys.argv[1], redis={"url": "redis://h:6379/0"}),
        )
    except MissingDependencyError as exc:
        print("missing:", exc)
    """
)


def test_embedded_default_needs_no_redis_package(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "readyz 200" in result.stdout
    assert "pip install 'app-kernel[redis]'" in result.stdout
