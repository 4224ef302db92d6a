"""JobRegistry: the spec's table, double registration and the reserved ``kernel:`` names."""

from __future__ import annotations

import random
from typing import Any

import pytest

from app_kernel import JobContext, JobRegistry
from app_kernel.jobs import TaskRegistrationError
from app_kernel.jobs.backends.base import RetryPolicy
from app_kernel.jobs.registry import kernel_tasks
from app_kernel.jobs.retry import backoff_delay


async def send_email(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Send one email."""
    return {"sent": payload["email"]}


def resize(payload: dict[str, Any], ctx: JobContext) -> None:
    return None


def test_register_and_query() -> None:
    registry = JobRegistry()
    registry.register("send_email", send_email, timeout=30.0, max_attempts=3)
    assert registry.get("send_email") is send_email
    assert registry.get("missing") is None
    assert registry.has("send_email")
    assert not registry.has("missing")
    assert "send_email" in registry
    assert "missing" not in registry
    assert len(registry) == 1
    assert list(registry) == ["send_email"]
    assert registry.get_metadata("send_email") == {
        "name": "send_email",
        "timeout": 30.0,
        "max_attempts": 3,
        "description": None,
        "is_async": True,
    }
    assert registry.get_metadata("missing") is None


def test_task_decorator_returns_the_function_and_records_metadata() -> None:
    registry = JobRegistry()
    decorated = registry.task("resize", timeout=5, description="Resize an image")(resize)
    assert decorated is resize
    meta = registry.get_metadata("resize")
    assert meta is not None
    assert meta["is_async"] is False
    assert meta["timeout"] == 5.0
    assert meta["max_attempts"] is None
    assert meta["description"] == "Resize an image"
    registry.task("send_email")(send_email)
    assert registry.get_metadata("send_email")["description"] == "Send one email."  # type: ignore[index]


def test_tasks_is_a_read_only_view() -> None:
    registry = JobRegistry()
    registry.register("send_email", send_email)
    view = registry.tasks
    assert dict(view) == {"send_email": send_email}
    with pytest.raises(TypeError):
        view["other"] = resize  # type: ignore[index]
    assert "other" not in registry


def test_registering_a_name_twice_raises() -> None:
    registry = JobRegistry()
    registry.register("send_email", send_email)
    with pytest.raises(TaskRegistrationError, match="already registered"):
        registry.register("send_email", resize)
    with pytest.raises(TaskRegistrationError):
        registry.task("send_email")(resize)
    assert registry.get("send_email") is send_email


def test_kernel_prefix_is_reserved_for_the_kernel() -> None:
    registry = JobRegistry()
    with pytest.raises(TaskRegistrationError, match="reserved"):
        registry.register("kernel:request_metrics", send_email)
    assert len(registry) == 0
    assert isinstance(kernel_tasks, JobRegistry)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("", {}),
        ("   ", {}),
        ("x" * 201, {}),
        ("ok", {"timeout": 0}),
        ("ok", {"timeout": -1.0}),
        ("ok", {"max_attempts": 0}),
        ("ok", {"max_attempts": 1.5}),
        ("ok", {"max_attempts": True}),
    ],
)
def test_bad_registrations_are_refused(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(TaskRegistrationError):
        JobRegistry().register(name, send_email, **options)


def test_processor_must_be_callable() -> None:
    with pytest.raises(TaskRegistrationError, match="callable"):
        JobRegistry().register("x", "not a function")  # type: ignore[arg-type]


def test_backoff_is_full_jitter_capped_exponential() -> None:
    policy = RetryPolicy(base_seconds=1.0, cap_seconds=10.0)
    random.seed(1)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (80, 10.0)):
        delays = [backoff_delay(policy, attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spreads over the whole range
    floor = RetryPolicy(base_seconds=1.0, cap_seconds=10.0, min_delay_seconds=0.5)
    assert all(backoff_delay(floor, 1) >= 0.5 for _ in range(100))
