"""Failpoints: test-only switches that SIGKILL the worker at a chosen state transition.

They exist for the crash tests (``tests/multiprocess/test_jobs_chaos.py``) and
nothing else; never set ``APP_KERNEL_FAILPOINTS`` in production.

The worker calls :func:`failpoint` at each transition of a job's life:

=================== =============================================================
``after_claim``      a job was claimed, before its handler starts
``after_heartbeat``  the heartbeat thread renewed a running job's lease
``before_ack``       the handler returned, before ``complete`` records the result
``before_fail``      the attempt failed, before ``fail`` records it (retry or dead)
=================== =============================================================

``APP_KERNEL_FAILPOINTS`` is a comma-separated list of ``name`` or ``name:N``;
the armed failpoint kills the process (``SIGKILL``, no cleanup at all) the
N-th time it is reached (the first time when N is left out). The variable is
read once, by :func:`load_failpoints` when a worker starts. When nothing is
armed, :func:`failpoint` costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping

__all__ = ("ENV_VAR", "FAILPOINTS", "failpoint", "load_failpoints", "parse_failpoints")

ENV_VAR = "APP_KERNEL_FAILPOINTS"
FAILPOINTS = frozenset({"after_claim", "after_heartbeat", "before_ack", "before_fail"})

_armed: dict[str, int] = {}  # name -> hits left before the kill
_lock = threading.Lock()  # the heartbeat thread reaches failpoints too


def parse_failpoints(spec: str) -> dict[str, int]:
    """``"after_claim,before_ack:3"`` -> ``{"after_claim": 1, "before_ack": 3}``.

    Raises:
        ValueError: an unknown name, or a count that is not a positive integer.
    """
    armed: dict[str, int] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, count_text = item.partition(":")
        name = name.strip()
        if name not in FAILPOINTS:
            msg = f"{ENV_VAR}: unknown failpoint {name!r}; expected some of {sorted(FAILPOINTS)}"
            raise ValueError(msg)
        try:
            count = int(count_text) if count_text.strip() else 1
        except ValueError:
            count = 0
        if count < 1:
            msg = f"{ENV_VAR}: {item!r}: the count must be a positive integer"
            raise ValueError(msg)
        armed[name] = count
    return armed


def load_failpoints(environ: Mapping[str, str] | None = None) -> None:
    """Arm the failpoints named in ``APP_KERNEL_FAILPOINTS`` (disarm all when unset).

    Raises:
        ValueError: the variable names an unknown failpoint or a bad count.
    """
    env = os.environ if environ is None else environ
    armed = parse_failpoints(env.get(ENV_VAR, ""))
    with _lock:
        _armed.clear()
        _armed.update(armed)


def failpoint(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and its count runs out; else nothing."""
    if name not in _armed:
        return
    with _lock:
        left = _armed.get(name)
        if left is None:
            return
        if left > 1:
            _armed[name] = left - 1
            return
    os.kill(os.getpid(), signal.SIGKILL)
