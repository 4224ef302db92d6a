"""HTTP throughput of one authenticated GET: bare FastAPI vs the kernel vs a hand-built stack.

Each of the three apps in ``_stack_apps.py`` (bare FastAPI without auth; the
kernel's ``create_service`` with auth, the global rate limit on Redis,
Prometheus metrics, request metrics and JSON logging at INFO; CORS +
asgi-correlation-id + prometheus-fastapi-instrumentator + slowapi on Redis + a
PyJWT dependency) runs in turn under the same uvicorn settings (1 worker,
``--no-access-log``, httptools, uvloop when installed) on a free port, and the
same load generator hits ``GET /api/v1/widgets`` with an ``Authorization``
header: wrk (``-t2 -c64``, 2 s warm-up then 10 s measured, ``--latency``) or,
when wrk is missing, an asyncio httpx load generator in a separate process.

Prints req/s, p50 and p99 per app and the ratios kernel/bare,
kernel/hand-assembled and p99 kernel/bare against the issue's targets
(throughput >= 0.5x bare, p99 < 3x bare), plus the load average before and
after (the numbers mean little on a loaded machine). On Linux it also prints
the server's CPU time per request (from ``/proc``, over the measured seconds):
the server's own cost, whatever share of the cores wrk and Redis take.

Run: ``python benchmarks/bench_http_stack.py`` (about 50 s; needs Redis at
``REDIS_URL`` or redis://127.0.0.1:6379, databases 0 and 1; the Redis keys it
writes carry a unique prefix and are deleted at the end). Options:
``--duration S``, ``--warmup S``, ``--connections N``, ``--threads N``,
``--only bare,kernel,hand``, ``--rounds N`` (each app N times, interleaved, a fresh
server each time; the medians are reported, and kernel/bare of every round).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _stack_apps  # noqa: E402

REDIS_BASE = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
USERNAME = "benchuser"
PASSWORD = "bench-password-" + uuid.uuid4().hex[:12]
APPS = ("bare", "kernel", "hand")
LABELS = {
    "bare": "bare FastAPI (no auth)",
    "kernel": "kernel create_service (full stack)",
    "hand": "hand-assembled (CORS+cid+pfi+slowapi+PyJWT)",
}


def redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_command(factory: str, port: int) -> list[str]:
    cmd = [
        sys.executable, "-m", "uvicorn", f"_stack_apps:{factory}", "--factory",
        "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--no-access-log", "--http", "httptools", "--log-level", "warning",
    ]  # fmt: skip
    try:
        import uvloop  # noqa: F401

        cmd += ["--loop", "uvloop"]
    except ImportError:
        cmd += ["--loop", "asyncio"]
    return cmd


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    cpu_us: float | None = None  # the server's CPU time per request (Linux only)


# --- load generators -------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        msg = f"unexpected wrk latency {text!r}"
        raise ValueError(msg)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, headers: dict[str, str], seconds: float, args: argparse.Namespace) -> Result:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Result(rps, p50, p99, total, errors)


_HTTPX_LOADGEN = r"""
import asyncio, json, sys, time
import httpx

async def main(url, headers, seconds, connections):
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as client:
        deadline = time.perf_counter() + seconds
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await client.get(url)
                    if r.status_code >= 400:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3
    print(json.dumps({"rps": len(latencies) / elapsed, "p50": pick(0.5), "p99": pick(0.99),
                      "n": len(latencies), "errors": errors}))

url, headers = sys.argv[1], json.loads(sys.argv[2])
seconds, connections = float(sys.argv[3]), int(sys.argv[4])
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
asyncio.run(main(url, headers, seconds, connections))
"""


def run_httpx(
    url: str, headers: dict[str, str], seconds: float, args: argparse.Namespace
) -> Result:
    import json

    cmd = [sys.executable, "-c", _HTTPX_LOADGEN, url, json.dumps(headers), str(seconds)]
    out = subprocess.run([*cmd, str(args.connections)], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    return Result(data["rps"], data["p50"], data["p99"], data["n"], data["errors"])


# --- one app ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` so far; None without ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"server exited with code {proc.returncode}"
            raise RuntimeError(msg)
        try:
            httpx.get(f"{base}/openapi.json", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    msg = f"server at {base} did not start within {timeout:g} s"
    raise RuntimeError(msg)


def bearer_for(app: str, base: str) -> dict[str, str]:
    if app == "bare":
        return {"Authorization": "Bearer not-checked"}
    if app == "hand":
        return {"Authorization": f"Bearer {_stack_apps.hand_token()}"}
    # The kernel: log the real user in over HTTP.
    answer = httpx.post(
        f"{base}/api/v1/auth/login", json={"username": USERNAME, "password": PASSWORD}, timeout=30
    )
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def bench_app(app: str, env: dict[str, str], args: argparse.Namespace) -> Result:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    factory = {"bare": "bare_app", "kernel": "kernel_app", "hand": "hand_app"}[app]
    # Each server's stderr goes to a file, as a service's logs would: the kernel's
    # JSON lines (the access line of every request included) are written there,
    # and the tail is shown if the server fails.
    stderr_path = Path(env["BENCH_DATA_DIR"]) / f"{app}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            uvicorn_command(factory, port),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=env["BENCH_DATA_DIR"],
        )
    try:
        try:
            wait_until_up(base, proc)
        except RuntimeError:
            sys.stderr.write(stderr_path.read_text(errors="replace")[-3000:])
            raise
        if args.pid_file:  # lets a profiler attach during the run
            Path(args.pid_file).write_text(f"{app} {proc.pid}\n", encoding="utf-8")
        headers = bearer_for(app, base)
        check = httpx.get(base + _stack_apps.PATH, headers=headers, timeout=10)
        if check.status_code != 200:
            msg = f"{app}: GET {_stack_apps.PATH} answered {check.status_code}: {check.text[:200]}"
            raise RuntimeError(msg)
        if app != "bare":
            missing = httpx.get(base + _stack_apps.PATH, timeout=10)
            if missing.status_code not in (401, 403):
                msg = f"{app}: a request without a token answered {missing.status_code}"
                raise RuntimeError(msg)
        load = run_wrk if args.loadgen == "wrk" else run_httpx
        url = base + _stack_apps.PATH
        load(url, headers, args.warmup, args)
        cpu_before = cpu_seconds(proc.pid)
        result = load(url, headers, args.duration, args)
        cpu_after = cpu_seconds(proc.pid)
        if cpu_before is not None and cpu_after is not None and result.requests:
            result.cpu_us = (cpu_after - cpu_before) / result.requests * 1e6
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _median(found: list[Result]) -> Result:
    """Each figure's median over the rounds (requests and errors summed)."""
    cpu = [r.cpu_us for r in found if r.cpu_us is not None]
    return Result(
        statistics.median(r.rps for r in found),
        statistics.median(r.p50_ms for r in found),
        statistics.median(r.p99_ms for r in found),
        sum(r.requests for r in found),
        sum(r.errors for r in found),
        statistics.median(cpu) if len(cpu) == len(found) else None,
    )


def _cpu_text(cpu_us: float | None) -> str:
    return "n/a" if cpu_us is None else f"{cpu_us:.0f}"


def cleanup_redis(prefix: str, urls: list[str]) -> int:
    removed = 0
    for url in urls:
        client = redis.Redis.from_url(url)
        try:
            # slowapi (limits) writes "LIMITS:LIMITER/<prefix>...": match anywhere.
            keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            if keys:
                removed += int(client.delete(*keys))
        finally:
            client.close()
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per app")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per app")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--only", default=",".join(APPS), help="comma list of bare,kernel,hand")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs per app, interleaved; medians are reported"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--pid-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "httpx"
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    apps = [a for a in args.only.split(",") if a]
    if unknown := set(apps) - set(APPS):
        parser.error(f"unknown apps: {', '.join(sorted(unknown))}")

    prefix = f"bench_http_{uuid.uuid4().hex[:10]}:"
    kernel_redis, slowapi_redis = redis_db(REDIS_BASE, 0), redis_db(REDIS_BASE, 1)
    data_dir = Path(tempfile.mkdtemp(prefix="bench_http_stack_"))
    env = {
        **os.environ,
        "BENCH_DATA_DIR": str(data_dir),
        "BENCH_KEY_PREFIX": prefix,
        "BENCH_JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
        "BENCH_REDIS_URL": kernel_redis,
        "BENCH_SLOWAPI_URL": slowapi_redis,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    for var in ("DEBUG", "LOG_LEVEL", "REDIS_URL", "DATABASE_URL", "JWT_SECRET"):
        env.pop(var, None)
    os.environ.update({k: env[k] for k in env if k.startswith("BENCH_")})

    load_before = os.getloadavg()
    nproc = os.cpu_count()
    loop = "uvloop" if "uvloop" in uvicorn_command("x", 0) else "asyncio"
    print(f"bench_http_stack: GET {_stack_apps.PATH}, uvicorn 1 worker, httptools, {loop}, "
          f"--no-access-log; {nproc} CPUs")  # fmt: skip
    if args.loadgen == "wrk":
        print(f"load generator: wrk -t{args.threads} -c{args.connections} "
              f"(warm-up {args.warmup:g} s, measured {args.duration:g} s) --latency")  # fmt: skip
    else:
        print(f"load generator: wrk NOT FOUND, fallback asyncio httpx in a separate process, "
              f"{args.connections} connections (warm-up {args.warmup:g} s, measured "
              f"{args.duration:g} s); its numbers are not comparable with wrk's")  # fmt: skip
    rm = _stack_apps.kernel_request_metrics_enabled() if "kernel" in apps else None
    rm_text = {None: "setting missing", True: "enabled", False: "DISABLED"}[rm]
    print(f"kernel: auth (real user, login token), global rate limit {_stack_apps.RATE_LIMIT}/60 s "
          f"on Redis db 0, Prometheus metrics, request metrics {rm_text}, JSON logs at INFO "
          f"to a file")  # fmt: skip
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    sys.stdout.flush()

    runs: dict[str, list[Result]] = {app: [] for app in apps}
    try:
        if "kernel" in apps:
            made = subprocess.run(
                [sys.executable, str(HERE / "_stack_apps.py"), "create-user", USERNAME, PASSWORD],
                env=env, cwd=data_dir, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if made.returncode != 0:
                sys.stderr.write(made.stdout[-2000:] + made.stderr[-3000:])
                msg = "creating the kernel app's user failed"
                raise SystemExit(msg)
        for round_no in range(1, args.rounds + 1):
            for app in apps:
                r = bench_app(app, env, args)
                runs[app].append(r)
                line = (
                    f"  round {round_no} {app}: {r.rps:,.0f} req/s, p99 {r.p99_ms:.2f} ms, "
                    f"server CPU {_cpu_text(r.cpu_us)} us/request"
                )
                print(line, flush=True)
    finally:
        removed = cleanup_redis(prefix, [kernel_redis, slowapi_redis])
        shutil.rmtree(data_dir, ignore_errors=True)
    load_after = os.getloadavg()

    results = {app: _median(found) for app, found in runs.items() if found}
    print()
    if args.rounds > 1:
        print(f"medians of {args.rounds} interleaved rounds; requests and errors are totals")
    print(f"{'app':<46} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>7} "
          f"{'CPU us/req':>10}")  # fmt: skip
    for app, r in results.items():
        print(f"{LABELS[app]:<46} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.requests:>9,} {r.errors:>7} {_cpu_text(r.cpu_us):>10}")  # fmt: skip
    print()
    bare, kernel, hand = (results.get(a) for a in APPS)
    if args.loadgen != "wrk":
        # The Python load generator saturates long before the servers do (it
        # measured ~160 req/s for all three apps): its ratios would say nothing.
        print("no verdict against the targets: install wrk (Debian package 'wrk') and run again")
    elif bare and kernel:
        ratio, p99_ratio = kernel.rps / bare.rps, kernel.p99_ms / bare.p99_ms
        ok = "meets" if ratio >= 0.5 else "MISSES"
        print(f"kernel/bare throughput:      {ratio:.2f}x  (target >= 0.5x: {ok})")
        ok = "meets" if p99_ratio < 3 else "MISSES"
        print(f"p99 kernel/bare:             {p99_ratio:.2f}x  (target < 3x: {ok})")
    if args.rounds > 1 and bare and kernel:
        each = sorted(k.rps / b.rps for k, b in zip(runs["kernel"], runs["bare"], strict=True))
        print(f"kernel/bare by round:        {', '.join(f'{r:.2f}x' for r in each)}")
    if bare and kernel and bare.cpu_us and kernel.cpu_us:
        # While the one-process server is the bottleneck, 0.5x the throughput
        # needs at most 2x bare's CPU per request.
        ratio = kernel.cpu_us / bare.cpu_us
        print(f"server CPU per request:      {ratio:.2f}x bare  (0.5x throughput needs <= 2x)")
    if kernel and hand:
        ratio = kernel.rps / hand.rps
        print(f"kernel/hand-assembled:       {ratio:.2f}x  (issue: > 3x follows from >= 0.5x bare)")
    if bare and hand:
        ratio = hand.rps / bare.rps
        print(f"hand-assembled/bare:         {ratio:.2f}x  (issue measured 0.15-0.17x)")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
          f"  (Redis keys removed: {removed})")  # fmt: skip


if __name__ == "__main__":
    main()
