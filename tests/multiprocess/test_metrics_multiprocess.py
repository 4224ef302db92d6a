"""/metrics under ``app-kernel serve --workers 3``: the merged counters add up exactly.

Requests go over new connections so that the three workers share them; every
scrape, whichever worker answers it, must count each request once. A stale
file left in the directory by an earlier run must not count, and the counters
of a killed worker must survive it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from _services import free_port

pytestmark = pytest.mark.multiprocess

SRC = Path(__file__).resolve().parents[2] / "src"
WORKERS = 3
STALE_PID = 2**22 + 7
"""Above Linux's largest pid_max: the pid of a process of an earlier run."""

APP = """
import os

from fastapi import FastAPI

from app_kernel import KernelSettings, init_app_kernel
from app_kernel.settings import FeatureSettings, ObservabilitySettings

app = FastAPI()


@app.get("/pid")
async def pid() -> dict[str, int]:
    return {"pid": os.getpid()}


init_app_kernel(
    app,
    KernelSettings(
        debug=True,
        data_dir=os.environ["METRICS_TEST_DATA_DIR"],
        features=FeatureSettings(protect_metrics="none"),
        observability=ObservabilitySettings(access_log=False, log_level="WARNING"),
    ),
)
"""


def _plant_stale_counter(directory: Path) -> None:
    """A counter file of a dead process of an earlier run, claiming 1000 requests."""
    db = MmapedDict(str(directory / f"counter_{STALE_PID}.db"))
    labels = {"method": "GET", "route": "/pid", "status_class": "2xx"}
    key = mmap_key("http_requests", "http_requests_total", list(labels), list(labels.values()), "")
    db.write_value(key, 1000.0, 0.0)
    db.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The app under three uvicorn workers; yields its base URL and metrics directory."""
    (tmp_path / "metrics_mp_app.py").write_text(APP)
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    _plant_stale_counter(metrics_dir)
    port = free_port()
    python_path = [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(python_path),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TEST_DATA_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "app_kernel", "serve", "metrics_mp_app:app"]
    log = (tmp_path / "server.log").open("wb")  # read it when the test fails
    process = subprocess.Popen(
        [*command, "--workers", str(WORKERS), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        yield f"http://127.0.0.1:{port}", metrics_dir
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _fresh_client(base_url: str) -> httpx.Client:
    # No keep-alive: every request opens a new connection, which any worker may accept.
    return httpx.Client(
        base_url=base_url, timeout=5, limits=httpx.Limits(max_keepalive_connections=0)
    )


def _wait_ready(http: httpx.Client, deadline: float) -> None:
    while True:
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)


def _pid_requests(http: httpx.Client, at_least: int, pids: set[int], deadline: float) -> int:
    """Send requests until at least ``at_least`` and every worker answered; count them."""
    sent = 0
    while sent < at_least or len(pids) < WORKERS:
        response = http.get("/pid")
        assert response.status_code == 200
        pids.add(response.json()["pid"])
        sent += 1
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(pids)} of {WORKERS} workers answered {sent} requests")
    return sent


def _scrape(http: httpx.Client) -> tuple[float, float]:
    """(requests counted for /pid, in-flight gauge) from one scrape."""
    response = http.get("/metrics")
    assert response.status_code == 200
    counted = in_flight = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.labels["route"] == "/pid":
                counted += sample.value
            elif sample.name == "http_requests_in_flight":
                in_flight += sample.value
    return counted, in_flight


def _settle(http: httpx.Client, expected: tuple[float, float], deadline: float) -> None:
    """Wait for the last response's own count: a worker counts a request after sending it."""
    while _scrape(http) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"the scrapes never reached {expected}: {_scrape(http)}")
        time.sleep(0.02)


def test_counters_add_up_exactly_across_workers(server: tuple[str, Path]) -> None:
    base_url, metrics_dir = server
    deadline = time.monotonic() + 15
    pids: set[int] = set()
    with _fresh_client(base_url) as http:
        _wait_ready(http, deadline)
        sent = _pid_requests(http, 200, pids, deadline)
        assert len(pids) == WORKERS
        assert not (metrics_dir / f"counter_{STALE_PID}.db").exists()
        _settle(http, (sent, 0), deadline)
        for _ in range(2 * WORKERS):  # every worker's scrape, not only the first's
            assert _scrape(http) == (sent, 0)

        # A killed worker's counts are kept: totals never go backwards.
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)
        more = _pid_requests(http, 30, set(), deadline + 5)
        _settle(http, (sent + more, 0), deadline + 10)
        for _ in range(2 * WORKERS):
            assert _scrape(http) == (sent + more, 0)


def test_serve_with_workers_makes_a_metrics_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """``app-kernel serve --workers N`` sets PROMETHEUS_MULTIPROC_DIR to a fresh directory."""
    import uvicorn

    import app_kernel.cli
    from app_kernel.cli import _serve

    seen: list[str | None] = []
    # setenv first, so that monkeypatch restores the variable's original state however
    # _serve changes it.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setattr(
        uvicorn, "run", lambda *a, **k: seen.append(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    )
    monkeypatch.setattr(app_kernel.cli, "load_kernel", lambda target: None)  # no module "m"
    args = argparse.Namespace(app="m:app", host="127.0.0.1", port=1, workers=2, reload=False)
    assert _serve(args) == 0
    directory = seen[0]
    assert directory is not None
    assert os.path.isdir(directory)
    assert os.listdir(directory) == []
    os.rmdir(directory)

    # One worker, or a directory the user chose: left alone.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    _serve(argparse.Namespace(**{**vars(args), "workers": None}))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/chosen")
    _serve(args)
    assert seen[1:] == [None, "/chosen"]
