"""prometheus_client underneath the facade: registries, exposition, multiprocess mode.

One process
    Each kernel has its own ``CollectorRegistry``, so several apps (and tests)
    in one process never see each other's metrics.

Several processes (``uvicorn --workers N``, gunicorn)
    prometheus_client's multiprocess mode: every process writes its values to
    memory-mapped ``*.db`` files in one directory and a scrape, whichever
    process answers it, merges them all. The directory comes from
    ``PROMETHEUS_MULTIPROC_DIR`` (or ``observability.prometheus_multiproc_dir``)
    and must be set **before the processes start**, so that every value is
    created in it; ``app-kernel serve --workers N`` makes a fresh one when it is
    not set. The directory must be local to one machine (liveness is checked
    by process id).

    What this module adds to prometheus_client, against its known failures:

    * The first process to start cleans the directory (``*.db``), so files of
      an earlier run never leak into this one. "First" is decided with two
      ``flock`` locks: every live process holds a shared lock on
      ``.app_kernel_alive.lock``; a process that can take it exclusively is
      alone. Start-ups are serialised by ``.app_kernel_start.lock``.
    * Gauges use only the ``live*`` modes, whose files are removed when their
      process dies: on a clean exit (:meth:`PrometheusBackend.close`) and, for
      crashed processes, by the sweep before each scrape.
    * Counters and histograms of dead processes are kept, so totals never go
      backwards. When more than :data:`COMPACT_AFTER_DEAD_FILES` such files pile
      up, they are merged into one ``counter_aggregate.db`` /
      ``histogram_aggregate.db`` and removed, so a scrape reads a bounded number
      of files however often workers restart. Scrapes hold a shared lock on
      ``.app_kernel_compact.lock`` and compaction an exclusive one, so no scrape
      sees a file twice or half-merged.
    * Rendering runs in a worker thread (the route calls it with
      ``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import mmap_dict as _mmap_dict
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.registry import Collector

from app_kernel.errors import SettingsError

__all__ = (
    "COMPACT_AFTER_DEAD_FILES",
    "LIVE_GAUGE_MODES",
    "MULTIPROC_ENV",
    "PrometheusBackend",
    "compact_dead_files",
    "fresh_multiproc_dir",
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
COMPACT_AFTER_DEAD_FILES = 16
"""Counter/histogram files of dead processes tolerated before they are merged."""
LIVE_GAUGE_MODES = frozenset({"livesum", "liveall", "livemax", "livemin", "livemostrecent"})
_ALIVE_LOCK = ".app_kernel_alive.lock"
_START_LOCK = ".app_kernel_start.lock"
_COMPACT_LOCK = ".app_kernel_compact.lock"
_AGGREGATE = "aggregate"

# prometheus_client's multiprocess internals are untyped.
_MultiProcessCollector: Any = _multiprocess.MultiProcessCollector
_MmapedDict: Any = _mmap_dict.MmapedDict
_mark_process_dead: Any = _multiprocess.mark_process_dead
_multi_process_value: Any = values.MultiProcessValue

# The shared "I am alive" lock of this process, per directory; held until exit.
_alive_locks: dict[str, IO[bytes]] = {}
_alive_guard = threading.Lock()


def _flock(file: IO[bytes], operation: int) -> None:
    import fcntl

    fcntl.flock(file.fileno(), operation)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _file_pid(path: str) -> int | None:
    """The process id in ``counter_123.db`` / ``gauge_livesum_123.db``, or None."""
    stem = os.path.basename(path)[: -len(".db")]
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _join_process(path: str) -> None:
    """Register this process in ``path``; the first one alive cleans the directory."""
    import fcntl

    with _alive_guard:
        if path in _alive_locks:
            return
        with open(os.path.join(path, _START_LOCK), "ab") as start:
            _flock(start, fcntl.LOCK_EX)
            alive = open(os.path.join(path, _ALIVE_LOCK), "ab")  # noqa: SIM115 - held until exit
            try:
                _flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another live process: keep the files
            else:
                for name in glob.glob(os.path.join(path, "*.db")):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(name)
            # Only start-ups (serialised above) ever ask for the exclusive lock.
            _flock(alive, fcntl.LOCK_SH)
            _alive_locks[path] = alive


def _enable_multiprocess(path: str) -> None:
    """Point prometheus_client at ``path`` before any value is created."""
    if not os.path.isdir(path):
        msg = (
            f"observability.prometheus_multiproc_dir ({MULTIPROC_ENV}): {path!r} is not a directory"
        )
        raise SettingsError(msg)
    current = os.environ.get(MULTIPROC_ENV)
    if current and os.path.realpath(current) != os.path.realpath(path):
        msg = (
            f"observability.prometheus_multiproc_dir is {path!r} but {MULTIPROC_ENV} "
            f"is {current!r}: prometheus_client writes to the environment's directory, "
            "so set only one, before the process starts"
        )
        raise SettingsError(msg)
    os.environ[MULTIPROC_ENV] = path
    if not getattr(values.ValueClass, "_multiprocess", False):
        # The variable was set after prometheus_client was imported; switching the
        # value class is prometheus_client's documented hook for this.
        values.ValueClass = _multi_process_value()
    _join_process(path)


def _merged_samples(
    metrics: Iterable[Metric],
) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
    for metric in metrics:
        for sample in metric.samples:
            yield metric.name, sample.name, metric.documentation, sample.labels, sample.value


def compact_dead_files(path: str, threshold: int = COMPACT_AFTER_DEAD_FILES) -> int:
    """Tidy the multiprocess directory; answer how many files were removed.

    Live-gauge files of dead processes are removed (their values no longer
    count). When more than ``threshold`` counter/histogram files belong to dead
    processes, they and the previous aggregate are merged into one aggregate
    file per type, which the collector reads like any other.
    """
    import fcntl

    files = glob.glob(os.path.join(path, "*.db"))
    dead_gauges: list[str] = []
    dead_by_type: dict[str, list[str]] = {"counter": [], "histogram": []}
    for name in files:
        kind = os.path.basename(name).split("_", 1)[0]
        pid = _file_pid(name)
        if pid is None or _pid_alive(pid):
            continue
        if kind == "gauge":
            dead_gauges.append(name)
        elif kind in dead_by_type:
            dead_by_type[kind].append(name)
    dead_files = sum(len(names) for names in dead_by_type.values())
    if not dead_gauges and dead_files <= threshold:
        return 0
    removed = 0
    with open(os.path.join(path, _COMPACT_LOCK), "ab") as lock:
        _flock(lock, fcntl.LOCK_EX)
        for name in dead_gauges:
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
                removed += 1
        if dead_files <= threshold:
            return removed
        for kind, names in dead_by_type.items():
            if not names:
                continue
            aggregate = os.path.join(path, f"{kind}_{_AGGREGATE}.db")
            sources = [*names, aggregate] if os.path.exists(aggregate) else names
            merged = _MultiProcessCollector.merge(sources, accumulate=False)
            partial = os.path.join(path, f".{kind}_{_AGGREGATE}.partial")
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
            out = _MmapedDict(partial)
            try:
                for metric_name, name, help_text, labels, value in _merged_samples(merged):
                    key = mmap_key(
                        metric_name, name, list(labels), list(labels.values()), help_text
                    )
                    out.write_value(key, value, 0.0)
            finally:
                out.close()
            os.replace(partial, aggregate)
            for name in names:
                os.remove(name)
                removed += 1
    return removed


class _LockedCollector(Collector):
    """Merges the directory's files under the shared compaction lock."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._collector = _MultiProcessCollector(None, path)

    def collect(self) -> Iterable[Metric]:
        import fcntl

        compact_dead_files(self._path)
        with open(os.path.join(self._path, _COMPACT_LOCK), "ab") as lock:
            _flock(lock, fcntl.LOCK_SH)
            return list(self._collector.collect())


class PrometheusBackend:
    """The prometheus_client objects of one kernel.

    Metrics are defined in :attr:`registry` (which also rejects a name that
    would collide with another metric's series); :meth:`render` produces the
    exposition, from the same registry in one process or from the merged
    directory in multiprocess mode.
    """

    def __init__(self, multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry(auto_describe=True)
        if multiproc_dir is None:
            self._exposition = self.registry
        else:
            _enable_multiprocess(multiproc_dir)
            self._exposition = CollectorRegistry()
            self._exposition.register(_LockedCollector(multiproc_dir))

    @property
    def multiprocess(self) -> bool:
        return self.multiproc_dir is not None

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Counter:
        return Counter(name, documentation, labelnames, registry=self.registry)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str], mode: str) -> Gauge:
        return Gauge(
            name,
            documentation,
            labelnames,
            registry=self.registry,
            multiprocess_mode=cast("Any", mode),
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float] | None = None,
    ) -> Histogram:
        kwargs: dict[str, Any] = {} if buckets is None else {"buckets": tuple(buckets)}
        return Histogram(name, documentation, labelnames, registry=self.registry, **kwargs)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (body, content type) for an ``Accept`` header; blocking."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self._exposition), content_type

    def close(self) -> None:
        """This process is leaving: its live gauges stop counting."""
        if self.multiproc_dir is not None:
            _mark_process_dead(os.getpid(), self.multiproc_dir)


def fresh_multiproc_dir() -> str:
    """A new empty directory for ``app-kernel serve --workers N``."""
    import tempfile

    return tempfile.mkdtemp(prefix="app-kernel-metrics-")
