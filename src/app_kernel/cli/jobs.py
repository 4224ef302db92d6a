"""``app-kernel worker`` runs jobs; ``app-kernel jobs`` inspects and repairs the queue."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from app_kernel.cli._args import OFFSET, whole_number
from app_kernel.cli._target import load_kernel, open_kernel
from app_kernel.errors import KernelError
from app_kernel.jobs.client import MAX_DEAD_PAGE
from app_kernel.jobs.metrics import WorkerMetricsServer
from app_kernel.jobs.worker import WorkerManager

__all__ = ("add_parsers",)


async def _worker(args: argparse.Namespace) -> int:
    kernel = load_kernel(args.app)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    try:
        manager = WorkerManager(kernel, concurrency=args.concurrency, queues=queues)
    except ValueError as exc:
        raise KernelError(str(exc)) from exc
    if not len(manager.registry):
        print(f"app-kernel: warning: {args.app} registers no tasks", file=sys.stderr)
    server = None
    if args.metrics_port is not None:
        try:
            server = WorkerMetricsServer(
                kernel.metrics,
                mode=kernel.settings.features.protect_metrics,
                token_hash=kernel.settings.observability.metrics_token_hash,
                host=args.metrics_host,
                port=args.metrics_port,
            ).start()
        except OSError as exc:
            msg = f"--metrics-port {args.metrics_port}: {exc}"
            raise KernelError(msg) from exc
    try:
        await manager.start()
    finally:
        if server is not None:
            await asyncio.to_thread(server.close)
    return 0


async def _status(args: argparse.Namespace) -> int:
    async with open_kernel(args.app) as kernel:
        print(json.dumps(await kernel.jobs.get_queue_status(), indent=2, default=str))
    return 0


async def _dead(args: argparse.Namespace) -> int:
    async with open_kernel(args.app) as kernel:
        for job in await kernel.jobs.list_dead(limit=args.limit, offset=args.offset):
            print(json.dumps(job.to_dict(), default=str))
    return 0


def _target(args: argparse.Namespace) -> str | None:
    if args.all == (args.job_id is not None):
        msg = f"jobs {args.jobs_command}: give either a JOB_ID or --all"
        raise KernelError(msg)
    job_id: str | None = args.job_id
    return job_id


async def _retry(args: argparse.Namespace) -> int:
    job_id = _target(args)
    async with open_kernel(args.app) as kernel:
        count = await kernel.jobs.retry_dead(job_id)
    print(f"requeued {count} dead job(s)")
    return 0 if count or job_id is None else 1


async def _purge(args: argparse.Namespace) -> int:
    job_id = _target(args)
    async with open_kernel(args.app) as kernel:
        count = await kernel.jobs.purge_dead(job_id)
    print(f"deleted {count} dead job(s)")
    return 0 if count or job_id is None else 1


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``worker`` and ``jobs`` and its sub-commands."""
    worker = commands.add_parser(
        "worker", help="run the jobs of MODULE:APP until SIGTERM or SIGINT"
    )
    worker.add_argument("app", help="the app whose tasks to run, as MODULE:APP")
    worker.add_argument(
        "--concurrency",
        type=whole_number(1, 10_000),
        default=None,
        help="jobs at once (default: jobs.worker_count)",
    )
    worker.add_argument(
        "--queues", default=None, help="comma-separated priorities to serve, e.g. high,normal"
    )
    worker.add_argument(
        "--metrics-port",
        type=whole_number(0, 65535),
        default=None,
        help="serve this worker's /metrics on this port (protected as features.protect_metrics;"
        " 0 picks a free port, logged at start)",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of --metrics-port (127.0.0.1)"
    )
    worker.set_defaults(run_async=_worker)

    jobs = commands.add_parser("jobs", help="inspect the job queue and manage dead jobs")
    jobs.add_argument("--app", help="MODULE:APP whose settings to use")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)

    status = sub.add_parser("status", help="queue depths, running and dead counts, live workers")
    status.set_defaults(run_async=_status)

    dead = sub.add_parser("dead", help="list dead jobs, most recent first (JSON lines)")
    dead.add_argument("--limit", type=whole_number(1, MAX_DEAD_PAGE), default=100)
    dead.add_argument("--offset", type=OFFSET, default=0)
    dead.set_defaults(run_async=_dead)

    for name, run, text in (
        ("retry", _retry, "requeue a dead job (or --all) with fresh attempts"),
        ("purge", _purge, "delete a dead job (or --all)"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("job_id", nargs="?", default=None)
        command.add_argument("--all", action="store_true", help="every dead job")
        command.set_defaults(run_async=run)
