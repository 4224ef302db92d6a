"""The worker: claims jobs, runs their processors, renews leases, drains on SIGTERM.

Threads and loops of one worker process:

* **The main event loop** runs the claim loop, one supervisor task per job
  (each runs the processor as a child task under ``asyncio.timeout``) and the
  reaper. It never claims more jobs than it has free slots
  (``jobs.worker_count``) and, when idle, blocks in ``queue.wait_for_work``.
* **The heartbeat thread** runs its own event loop with its *own* backend
  connection (a second SQLite connection to the same file, or a second Redis
  client on the same URL). Every ``heartbeat_seconds`` it renews the lease of
  each running job and the worker's presence record. A processor that blocks
  the main loop (``time.sleep`` inside ``async def``) therefore cannot lose
  its lease; cancel requests and lost leases come back to the main loop with
  ``call_soon_threadsafe``.
* **The handler thread pool** (``jobs.thread_pool_size``) runs processors
  written as plain functions. A thread cannot be killed: when such a handler
  times out, its attempt fails at once and the thread is abandoned to finish
  on its own; :attr:`WorkerManager.abandoned_threads` counts them, and they
  keep a pool slot until they return.

Shutdown (SIGTERM, SIGINT or :meth:`WorkerManager.stop`): stop claiming, let
running jobs finish for ``shutdown_grace_seconds`` (a second signal cuts the
wait short), then cancel the rest and ``release`` their leases so another
worker takes them at once without spending an attempt; unregister and close.

Metrics (:mod:`app_kernel.jobs.metrics`): started, succeeded, failed, retried,
dead and abandoned-thread counters and a duration histogram by task, and queue
gauges refreshed every ``reap_interval_seconds``. ``app-kernel worker MODULE:APP
--metrics-port N`` serves them on ``127.0.0.1:N/metrics``. On one host where the
API and the workers share ``PROMETHEUS_MULTIPROC_DIR``, the API's ``/metrics``
already includes the workers' series (they write to the same directory), so
scraping the worker port as well would count them twice.

Trace context: a job enqueued during a request carries that request's trace id
in ``metadata["trace_id"]``; the worker binds it as ``trace_id`` in the log
context (and ``ctx.log``) of every attempt and makes it the current trace id,
so the job's logs, and jobs it enqueues, tie back to the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import random
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from app_kernel.errors import BackendUnavailable
from app_kernel.jobs.backends.base import PRIORITIES, Claimed, JobQueue, JobSpec, Priority
from app_kernel.jobs.client import to_json
from app_kernel.jobs.context import JobContext
from app_kernel.jobs.errors import InvalidJobError, PermanentError, Retry
from app_kernel.jobs.failpoints import failpoint, load_failpoints
from app_kernel.jobs.metrics import JobMetrics
from app_kernel.jobs.registry import JobRegistry, TaskInfo, kernel_tasks
from app_kernel.jobs.retry import backoff_delay, policy_from_settings
from app_kernel.observability.logging import get_logger, log_context
from app_kernel.observability.tracing import reset_trace_id, set_trace_id

if TYPE_CHECKING:
    from app_kernel.kernel import Kernel

__all__ = ("SideQueueFactory", "WorkerManager", "open_side_queue")

_log = get_logger("app_kernel.jobs.worker")

_CANCEL_WAIT_SECONDS = 2.0
_SETTLE_BACKOFF_SECONDS = (0.05, 1.0)  # first and longest wait between result retries

_P = ParamSpec("_P")
_T = TypeVar("_T")

StopReason = Literal["shutdown", "cancelled", "lost"]
SideQueueFactory = Callable[["Kernel"], Awaitable[tuple[JobQueue, Callable[[], Awaitable[None]]]]]


async def open_side_queue(kernel: Kernel) -> tuple[JobQueue, Callable[[], Awaitable[None]]]:
    """A second backend on its own connection (for the heartbeat thread), and its closer."""
    if kernel.redis is not None:
        from app_kernel._redis.client import create_redis_client
        from app_kernel.jobs.backends.redis import RedisJobQueue

        client = create_redis_client(kernel.settings.redis)
        namespace = getattr(kernel.job_queue, "namespace", "default")
        redis_queue = RedisJobQueue(client, kernel.redis_keys, namespace=namespace)

        async def close_redis() -> None:
            extra = getattr(redis_queue, "aclose", None)  # a connection of its own, if any
            if extra is not None:
                await extra()
            await client.aclose()

        return redis_queue, close_redis
    from app_kernel._sqlite.store import SqliteStore
    from app_kernel.jobs.backends.sqlite import SqliteJobQueue

    assert kernel.sqlite is not None
    store = SqliteStore(kernel.sqlite.path)
    sqlite_queue = SqliteJobQueue(store)
    await store.open()
    return sqlite_queue, store.close


class _HandlerExit(RuntimeError):
    """A processor raised SystemExit or KeyboardInterrupt; the attempt fails, the worker lives."""


class _JobTimeout(TimeoutError):
    """The attempt ran past its timeout."""


@dataclass(eq=False, slots=True)
class _Running:
    claimed: Claimed
    ctx: JobContext
    supervisor: asyncio.Task[None] | None = None
    handler: asyncio.Task[Any] | None = None
    stop_reason: StopReason | None = None


class WorkerManager:
    """Runs a kernel's jobs in this process until stopped.

    Args:
        kernel: the kernel whose queue and settings to use (opened by :meth:`start`
            if it is not open yet, and then closed by it).
        registry: the processors; the kernel's registry when None.
        concurrency: jobs run at once; ``jobs.worker_count`` when None.
        queues: priorities to take jobs from; all when None.
        worker_id: this worker's name; host, pid and a random suffix when None.
        handle_signals: install SIGTERM/SIGINT handlers (main thread only).
        side_queue_factory: builds the heartbeat thread's own backend.
    """

    def __init__(
        self,
        kernel: Kernel,
        registry: JobRegistry | None = None,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        worker_id: str | None = None,
        handle_signals: bool = True,
        side_queue_factory: SideQueueFactory = open_side_queue,
    ) -> None:
        self.kernel = kernel
        self.registry: JobRegistry = registry if registry is not None else kernel.registry
        if self.registry is None:
            self.registry = JobRegistry()
        self.settings = kernel.settings.jobs
        self.concurrency = concurrency if concurrency is not None else self.settings.worker_count
        if self.concurrency < 1:
            msg = f"concurrency must be 1 or more, got {self.concurrency!r}"
            raise ValueError(msg)
        chosen = tuple(queues) if queues else PRIORITIES
        unknown = [q for q in chosen if q not in PRIORITIES]
        if unknown or not chosen:
            msg = f"queues: expected some of {', '.join(PRIORITIES)}, got {list(chosen)!r}"
            raise ValueError(msg)
        self.queues: tuple[Priority, ...] = tuple(q for q in PRIORITIES if q in chosen)
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self.handle_signals = handle_signals
        self._side_queue_factory = side_queue_factory
        self._retry_policy = policy_from_settings(self.settings)
        self.job_metrics = JobMetrics(kernel.metrics, self.registry)
        self._weights: dict[Priority, int] | None = (
            None
            if self.settings.strict_priority
            else dict(zip(PRIORITIES, self.settings.priority_weights, strict=True))
        )
        self.abandoned_threads = 0
        """Plain-function handlers that timed out or were cancelled while running."""
        self.started_at: float | None = None
        self._running: dict[str, _Running] = {}
        self._leases: dict[str, str] = {}  # job_id -> token, read by the heartbeat thread
        self._lock = threading.Lock()
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event = asyncio.Event()
        self._hurry_event = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._done = asyncio.Event()
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._opened_kernel = False
        self._signals: list[signal.Signals] = []

    @property
    def queue(self) -> JobQueue:
        return self.kernel.job_queue

    @property
    def running_jobs(self) -> list[str]:
        """Ids of the jobs running now."""
        return list(self._running)

    @property
    def is_running(self) -> bool:
        return self._state == "running"

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the kernel, start the heartbeat thread and run jobs until stopped.

        Returns once the worker has shut down (after SIGTERM/SIGINT or :meth:`stop`),
        with every running job finished or handed back.

        Raises:
            RuntimeError: the manager was already started.
        """
        if self._state != "new":
            msg = "this WorkerManager was already started; build a new one"
            raise RuntimeError(msg)
        load_failpoints()  # test-only crash switches; nothing is armed normally
        self._state = "running"
        self._loop = asyncio.get_running_loop()
        # First, so that a SIGTERM arriving while the kernel opens is a graceful
        # stop rather than the default action, which kills the process.
        self._install_signal_handlers()
        try:
            if not self.kernel.is_open:
                await self.kernel.open()
                self._opened_kernel = True
            self.started_at = time.time()
            self._pool = ThreadPoolExecutor(
                self.settings.thread_pool_size, thread_name_prefix="app_kernel-job"
            )
            await self._start_heartbeat_thread()
        except BaseException:
            await self._teardown()
            raise
        _log.info(
            "worker started",
            worker_id=self.worker_id,
            concurrency=self.concurrency,
            queues=list(self.queues),
            tasks=sorted(self.registry),
            backend=self.kernel.backend_name,
        )
        reaper = asyncio.create_task(self._reap_loop(), name="app_kernel-job-reaper")
        try:
            await self._claim_loop()
        finally:
            self._state = "stopping"
            try:
                await self._drain()
            finally:
                self._stop_event.set()
                _, pending = await asyncio.wait({reaper}, timeout=_CANCEL_WAIT_SECONDS)
                if pending:
                    reaper.cancel()
                    await asyncio.wait({reaper}, timeout=_CANCEL_WAIT_SECONDS)
                await self._teardown()

    async def stop(self) -> None:
        """Stop claiming, drain running jobs within the grace period and wait for shutdown."""
        if self._state == "new":
            self._state = "stopped"
            self._done.set()
            return
        self.request_stop()
        await self._done.wait()

    def request_stop(self, reason: str = "stop requested") -> None:
        """Begin shutdown without waiting (a second call skips the grace period)."""
        if self._stop_event.is_set():
            self._hurry_event.set()
            return
        _log.info("worker stopping", worker_id=self.worker_id, reason=reason)
        self._stop_event.set()

    def _install_signal_handlers(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self.request_stop, f"received {sig.name}")
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
                continue
            self._signals.append(sig)

    async def _teardown(self) -> None:
        try:
            self._hb_stop.set()
            if self._hb_thread is not None:
                await asyncio.to_thread(self._hb_thread.join)
            with contextlib.suppress(Exception):
                await self.queue.unregister_worker(self.worker_id)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            if self._loop is not None:
                for sig in self._signals:
                    self._loop.remove_signal_handler(sig)
            self._signals.clear()
            if self._opened_kernel:
                await self.kernel.close()
        finally:
            self._state = "stopped"
            self._done.set()
            _log.info(
                "worker stopped", worker_id=self.worker_id, abandoned_threads=self.abandoned_threads
            )

    # --- claiming ------------------------------------------------------------------

    async def _until_stop(self, aw: Coroutine[Any, Any, Any]) -> None:
        """Await ``aw`` until it ends or the worker is stopping."""
        work = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({work, stopper}, return_when="FIRST_COMPLETED")
        finally:
            for task in (work, stopper):
                task.cancel()
            # Bounded: a backend wait that ignores cancellation must not hang shutdown.
            _, stuck = await asyncio.wait({work, stopper}, timeout=_CANCEL_WAIT_SECONDS)
            if stuck:
                _log.warning("a backend wait ignored cancellation; abandoned", task=repr(work))
        if work.done() and not work.cancelled() and work.exception() is not None:
            _log.warning("waiting for work failed", error=repr(work.exception()))
            await self._until_stop(asyncio.sleep(1.0))

    async def _claim_loop(self) -> None:
        lease = self.settings.lease_seconds
        while not self._stop_event.is_set():
            self._slot_freed.clear()
            free = self.concurrency - len(self._running)
            if free <= 0:
                await self._until_stop(self._slot_freed.wait())
                continue
            try:
                claimed = await self.queue.claim(
                    self.worker_id,
                    free,
                    lease_seconds=lease,
                    queues=self.queues,
                    weights=self._weights,
                )
            except Exception as exc:
                _log.warning("claiming jobs failed", error=repr(exc), worker_id=self.worker_id)
                await self._until_stop(asyncio.sleep(1.0))
                continue
            for job in claimed:
                failpoint("after_claim")
                self._launch(job)
            if not claimed:
                await self._until_stop(self.queue.wait_for_work(1.0))

    def _launch(self, job: Claimed) -> None:
        try:
            metadata = json.loads(job.metadata_json) if job.metadata_json else {}
        except ValueError:
            metadata = {}
        ctx = JobContext(
            job_id=job.job_id,
            task_name=job.task_name,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            user_id=job.user_id,
            metadata=metadata if isinstance(metadata, dict) else {},
            enqueued_at=job.enqueued_at,
            progress_sink=partial(self.queue.progress, job.job_id, job.token),
        )
        trace_id = ctx.metadata.get("trace_id")
        if isinstance(trace_id, str) and trace_id:
            ctx.log = ctx.log.bind(trace_id=trace_id)
        run = _Running(job, ctx)
        self._running[job.job_id] = run
        with self._lock:
            self._leases[job.job_id] = job.token
        run.supervisor = asyncio.create_task(self._supervise(run), name=f"job:{job.job_id}")

    # --- running one job -----------------------------------------------------------

    def _task_info(self, name: str) -> TaskInfo | None:
        return self.registry.get_info(name) or kernel_tasks.get_info(name)

    async def _supervise(self, run: _Running) -> None:
        job = run.claimed
        trace_id = run.ctx.metadata.get("trace_id")
        trace_id = trace_id if isinstance(trace_id, str) and trace_id else None
        trace_token = set_trace_id(trace_id)  # this task's context only
        try:
            with log_context(trace_id=trace_id) if trace_id else contextlib.nullcontext():
                await self._execute(run)
        except Exception:
            # A backend call failed: the lease runs out and any worker's reaper
            # counts the attempt, so nothing is lost.
            _log.exception("handling a job failed", job_id=job.job_id, task=job.task_name)
        finally:
            reset_trace_id(trace_token)
            self._running.pop(job.job_id, None)
            with self._lock:
                self._leases.pop(job.job_id, None)
            self._slot_freed.set()

    async def _execute(self, run: _Running) -> None:
        job, ctx = run.claimed, run.ctx
        info = self._task_info(job.task_name)
        if info is None:
            error = (
                f"unknown task {job.task_name!r}: no processor is registered under this "
                f"name in worker {self.worker_id}"
            )
            await self._fail(run, error, None, retry_delay=None)
            return
        try:
            payload = json.loads(job.payload_json)
        except ValueError as exc:
            await self._fail(run, f"payload is not valid JSON: {exc}", None, retry_delay=None)
            return
        ctx.log.info("job started")
        self.job_metrics.count("started", job.task_name)
        started = time.monotonic()
        run.handler = asyncio.create_task(self._invoke(info, payload, ctx, job.timeout_seconds))
        await asyncio.wait({run.handler})  # never cancels the handler on our behalf
        self.job_metrics.duration(job.task_name, time.monotonic() - started)
        elapsed = round(time.monotonic() - started, 3)
        handler = run.handler
        if run.stop_reason == "lost":
            ctx.log.warning("lease lost: the result is dropped", seconds=elapsed)
            return
        if not handler.cancelled() and handler.exception() is None:
            await self._complete(run, payload, handler.result(), elapsed)
            return
        if run.stop_reason == "shutdown":
            released = await self.queue.release(job.job_id, job.token)
            ctx.log.info("job handed back at shutdown", released=released, seconds=elapsed)
            return
        if run.stop_reason == "cancelled":
            await self._fail(run, "cancelled while running", None, retry_delay=None)
            return
        failure = handler.exception() if not handler.cancelled() else None
        if failure is None:
            failure = asyncio.CancelledError("the handler was cancelled")
        tb = "".join(traceback.format_exception(failure))
        if isinstance(failure, PermanentError):
            retry: float | None = None
        elif isinstance(failure, Retry):
            retry = failure.delay_seconds
        else:
            retry = backoff_delay(self._retry_policy, job.attempt)
        await self._fail(run, f"{type(failure).__name__}: {failure}", tb, retry_delay=retry)

    async def _invoke(
        self, info: TaskInfo, payload: dict[str, Any], ctx: JobContext, timeout_seconds: float
    ) -> Any:
        deadline = asyncio.timeout(timeout_seconds)
        try:
            async with deadline:
                if info.is_async:
                    return await info.processor(payload, ctx)
                return await self._run_in_thread(info, payload, ctx)
        except TimeoutError:
            if deadline.expired():
                msg = f"the job ran past its timeout of {timeout_seconds:g}s"
                raise _JobTimeout(msg) from None
            raise
        except (SystemExit, KeyboardInterrupt) as exc:
            # A task that raises these would take the event loop down with it.
            msg = f"the handler raised {type(exc).__name__}({exc})"
            raise _HandlerExit(msg) from exc

    async def _run_in_thread(self, info: TaskInfo, payload: dict[str, Any], ctx: JobContext) -> Any:
        assert self._pool is not None
        context = contextvars.copy_context()
        future = self._pool.submit(context.run, info.processor, payload, ctx)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel() and not future.done():
                self.abandoned_threads += 1
                self.job_metrics.count("abandoned_threads", ctx.task_name)
                ctx.log.warning(
                    "a plain-function handler was abandoned in its thread; it keeps running "
                    "until it returns",
                    abandoned_threads=self.abandoned_threads,
                )
            raise

    def _follow_up(self, job: Claimed, task_name: str | None, body: str) -> JobSpec | None:
        if task_name is None:
            return None
        info = self._task_info(task_name)
        timeout = info.timeout if info and info.timeout else self.settings.default_timeout_seconds
        attempts = info.max_attempts if info and info.max_attempts else self.settings.max_attempts
        return JobSpec(
            job_id=uuid.uuid4().hex,
            task_name=task_name,
            payload_json=body,
            priority=job.priority,
            user_id=job.user_id,
            timeout_seconds=timeout,
            max_attempts=attempts,
            metadata_json=json.dumps({"parent_job_id": job.job_id}),
        )

    async def _settle(
        self, call: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``call`` (``complete`` or ``fail``), retried while the backend is unavailable.

        A Redis restart leaves dead connections in the pool, so the first call after
        it fails even though Redis is back; without a retry the result is dropped
        and the job runs again. Retrying is safe: both calls are fenced by the lease
        token (a retry of a call that did land answers "lost"). Gives up, with
        jittered backoff, once the lease would have run out anyway.
        """
        deadline = time.monotonic() + self.settings.lease_seconds
        delay, longest = _SETTLE_BACKOFF_SECONDS
        while True:
            try:
                return await call(*args, **kwargs)
            except BackendUnavailable as exc:
                wait = delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
                if time.monotonic() + wait > deadline:
                    raise
                _log.warning("recording a job's outcome failed; retrying", error=repr(exc))
                await asyncio.sleep(wait)
                delay = min(delay * 2, longest)

    async def _complete(
        self, run: _Running, payload: dict[str, Any], result: Any, elapsed: float
    ) -> None:
        job = run.claimed
        try:
            result_json = to_json(result, "the handler's result")
        except InvalidJobError as exc:
            retry = backoff_delay(self._retry_policy, job.attempt)
            await self._fail(run, str(exc), None, retry_delay=retry)
            return
        del payload
        failpoint("before_ack")
        body = (
            f'{{"job_id":{json.dumps(job.job_id)},"result":{result_json},'
            f'"payload":{job.payload_json}}}'
        )
        ok = await self._settle(
            self.queue.complete,
            job.job_id,
            job.token,
            result_json,
            result_ttl_seconds=self.settings.result_ttl_seconds,
            on_success=self._follow_up(job, job.on_success, body),
        )
        if ok:
            self.job_metrics.count("succeeded", job.task_name)
            run.ctx.log.info("job succeeded", seconds=elapsed)
        else:
            run.ctx.log.warning("lease lost before completion: the result is dropped")

    async def _fail(
        self, run: _Running, error: str, tb: str | None, *, retry_delay: float | None
    ) -> None:
        job = run.claimed
        body = (
            f'{{"job_id":{json.dumps(job.job_id)},"error":{json.dumps(error)},'
            f'"payload":{job.payload_json}}}'
        )
        failpoint("before_fail")
        outcome = await self._settle(
            self.queue.fail,
            job.job_id,
            job.token,
            error=error,
            traceback=tb,
            retry_delay_seconds=retry_delay,
            dead_ttl_seconds=self.settings.dead_ttl_seconds,
            on_failure=self._follow_up(job, job.on_failure, body),
        )
        log = run.ctx.log.bind(error=error, outcome=outcome)
        if outcome != "lost":
            self.job_metrics.count("failed", job.task_name)
            self.job_metrics.count("dead" if outcome == "dead" else "retried", job.task_name)
        if outcome == "lost":
            log.warning("lease lost before the failure was recorded")
        elif outcome == "dead":
            log.error("job failed for good", traceback=tb)
        else:
            log.warning("job failed; will retry", retry_delay_seconds=retry_delay)

    # --- reaper, heartbeats, lease signals -----------------------------------------

    async def _reap_loop(self) -> None:
        # Ends on the stop flag rather than by cancellation alone: a cancel that lands
        # inside a backend call can be turned into an ordinary error by the driver.
        while not self._stop_event.is_set():
            try:
                count = await self.queue.reap(
                    retry=self._retry_policy, dead_ttl_seconds=self.settings.dead_ttl_seconds
                )
                if count:
                    _log.warning("reaped jobs whose lease expired", count=count)
            except Exception as exc:
                _log.warning("reaping expired leases failed", error=repr(exc))
            try:
                self.job_metrics.queue_status(await self.queue.status())
            except Exception as exc:
                _log.warning("refreshing the queue gauges failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), self.settings.reap_interval_seconds)

    async def _start_heartbeat_thread(self) -> None:
        assert self._loop is not None
        ready: asyncio.Future[None] = self._loop.create_future()
        self._hb_thread = threading.Thread(
            target=self._heartbeat_thread_main,
            args=(ready,),
            name=f"app_kernel-heartbeat-{self.worker_id}",
            daemon=True,
        )
        self._hb_thread.start()
        await ready

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the main loop is closed
                loop.call_soon_threadsafe(callback, *args)

    def _heartbeat_thread_main(self, ready: asyncio.Future[None]) -> None:
        def settle(error: BaseException | None) -> None:
            if ready.done():
                return
            if error is None:
                ready.set_result(None)
            else:
                ready.set_exception(error)

        try:
            asyncio.run(self._heartbeat_main(settle))
        except BaseException as exc:
            self._post(settle, exc)
            _log.exception("the heartbeat thread stopped", worker_id=self.worker_id)

    async def _heartbeat_main(self, settle: Callable[[BaseException | None], None]) -> None:
        queue, close = await self._side_queue_factory(self.kernel)
        try:
            await self._presence(queue)
            self._post(settle, None)
            while not self._hb_stop.is_set():
                await asyncio.to_thread(self._hb_stop.wait, self.settings.heartbeat_seconds)
                if self._hb_stop.is_set():
                    break
                await self._beat(queue)
        finally:
            await close()

    async def _presence(self, queue: JobQueue) -> None:
        with self._lock:
            running = len(self._leases)
        info = {
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "concurrency": self.concurrency,
            "queues": list(self.queues),
            "tasks": sorted(self.registry),
            "started_at": self.started_at,
            "running": running,
        }
        ttl = max(self.settings.lease_seconds, 3 * self.settings.heartbeat_seconds)
        await queue.register_worker(self.worker_id, info, ttl)

    async def _beat(self, queue: JobQueue) -> None:
        with self._lock:
            leases = dict(self._leases)
        lease = self.settings.lease_seconds

        async def renew(job_id: str, token: str) -> None:
            try:
                reply = await queue.heartbeat(job_id, token, lease)
            except Exception as exc:
                _log.warning("lease heartbeat failed", job_id=job_id, error=repr(exc))
                return
            failpoint("after_heartbeat")
            if not reply.owned:
                with self._lock:
                    if self._leases.get(job_id) == token:
                        del self._leases[job_id]
                self._post(self._on_lease_signal, job_id, token, "lost")
            elif reply.cancel_requested:
                self._post(self._on_lease_signal, job_id, token, "cancelled")

        await asyncio.gather(*(renew(j, t) for j, t in leases.items()))
        try:
            await self._presence(queue)
        except Exception as exc:
            _log.warning("worker presence heartbeat failed", error=repr(exc))

    def _on_lease_signal(self, job_id: str, token: str, reason: StopReason) -> None:
        run = self._running.get(job_id)
        if run is None or run.claimed.token != token or run.stop_reason is not None:
            return
        run.ctx.log.warning(
            "cancel requested: stopping the handler"
            if reason == "cancelled"
            else "lease lost: stopping the handler"
        )
        self._stop_handler(run, reason)

    def _stop_handler(self, run: _Running, reason: StopReason) -> None:
        run.stop_reason = reason
        run.ctx.cancel_event.set()
        if run.handler is not None:
            run.handler.cancel()

    # --- shutdown ------------------------------------------------------------------

    async def _drain(self) -> None:
        supervisors = [r.supervisor for r in self._running.values() if r.supervisor is not None]
        if not supervisors:
            return
        grace = self.settings.shutdown_grace_seconds
        _log.info("waiting for running jobs", count=len(supervisors), grace_seconds=grace)
        everything = asyncio.ensure_future(asyncio.wait(supervisors))
        hurry = asyncio.ensure_future(self._hurry_event.wait())
        try:
            if grace > 0:
                await asyncio.wait(
                    {everything, hurry}, timeout=grace, return_when="FIRST_COMPLETED"
                )
        finally:
            hurry.cancel()
            everything.cancel()
            await asyncio.gather(hurry, everything, return_exceptions=True)
        leftover = [r for r in self._running.values() if r.supervisor is not None]
        for run in leftover:
            if run.stop_reason is None:
                self._stop_handler(run, "shutdown")
        pending = [r.supervisor for r in leftover if r.supervisor is not None]
        if pending:
            # A handler that swallows cancellation gets a bounded extra moment;
            # past it, its lease simply expires and the reaper hands the job on.
            _, stuck = await asyncio.wait(pending, timeout=max(5.0, self.settings.lease_seconds))
            for task in stuck:
                task.cancel()
            if stuck:
                _log.warning(
                    "jobs did not stop at shutdown; their leases will expire", count=len(stuck)
                )
                await asyncio.gather(*stuck, return_exceptions=True)
