"""The start-up check on signing secrets: what people paste is refused, what
generators make is not."""

from __future__ import annotations

import random
import string

import pytest

from app_kernel.auth.secret_strength import secret_weakness


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("k" * 31, "is 31 bytes"),
        ("s" * 40, "too few different characters"),
        ("ab" * 32, "repeats itself"),
        ("changeme" * 4, "repeats itself"),
        ("your-secret-your-secret-your-secret", "repeats itself"),
        ("0123456789abcdef" * 2, "repeats itself"),
        ("password1234567890" * 2, "repeats itself"),
    ],
)
def test_patterned_secrets_are_weak(secret: str, reason: str) -> None:
    weakness = secret_weakness(secret)
    assert weakness is not None
    assert reason in weakness


@pytest.mark.parametrize(
    ("alphabet", "length"),
    [
        (string.hexdigits[:16], 32),  # secrets.token_hex(16)
        (string.hexdigits[:16], 128),  # secrets.token_hex(64)
        (string.ascii_letters + string.digits + "-_", 43),  # secrets.token_urlsafe(32)
        (string.ascii_lowercase + string.digits, 32),
    ],
)
def test_generated_secrets_pass(alphabet: str, length: int) -> None:
    draw = random.Random(f"{alphabet}{length}")  # noqa: S311 - seeded: same samples each run
    for _ in range(2000):
        secret = "".join(draw.choice(alphabet) for _ in range(length))
        assert secret_weakness(secret) is None, secret
