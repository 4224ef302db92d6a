"""Failed-login throttling per username and per client IP."""

from __future__ import annotations

import hashlib

from app_kernel._ip_bucket import limit_bucket
from app_kernel.auth.errors import AuthError
from app_kernel.auth.state.base import AuthStateBackend
from app_kernel.auth.store import InvalidUsername, normalise_username

__all__ = ("LoginThrottle",)


def _user_key(username: str) -> str:
    try:
        name = normalise_username(username)
    except InvalidUsername:
        name = username
    return "login-user:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class LoginThrottle:
    """Counts failed logins only; refuses with 429 once a counter is over its limit.

    A success clears its username's counter but never the IP's, so an attacker
    holding one valid account cannot reset the counter it sprays others from.
    """

    def __init__(
        self,
        state: AuthStateBackend,
        *,
        max_per_user: int,
        max_per_ip: int,
        window_seconds: int,
    ) -> None:
        self.state = state
        self.max_per_user = max_per_user
        self.max_per_ip = max_per_ip
        self.window_seconds = window_seconds

    @staticmethod
    def keys(username: str, client_ip: str | None) -> tuple[str, str]:
        return _user_key(username), f"login-ip:{limit_bucket(client_ip or 'unknown')}"

    async def check(self, username: str, client_ip: str | None) -> None:
        """Raise 429 (with ``Retry-After``) when either counter is at its limit."""
        user_key, ip_key = self.keys(username, client_ip)
        per_user, per_ip = await self.state.failures([user_key, ip_key])
        waits = [
            count.retry_after_seconds
            for count, limit in ((per_user, self.max_per_user), (per_ip, self.max_per_ip))
            if count.count >= limit
        ]
        if waits:
            raise AuthError.throttled(max(waits))

    async def failed(self, username: str, client_ip: str | None) -> None:
        """Count one failure on both counters."""
        await self.state.add_failure(list(self.keys(username, client_ip)), self.window_seconds)

    async def succeeded(self, username: str) -> None:
        """Clear the username's counter (the IP's stays)."""
        await self.state.clear_failures(_user_key(username))
