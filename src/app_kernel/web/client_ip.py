"""The client's address, believing proxy headers only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from app_kernel.observability.logging import get_logger
from app_kernel.settings import UNIX_PEER
from app_kernel.types import Scope

__all__ = ("ClientIpResolver",)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_log = get_logger("app_kernel.web")


def _parse(value: str) -> IPAddress | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    if ":" in value:
        # An IPv6 zone index (fe80::1%eth0) names an interface of the sender's
        # host, not part of the client's address; its text has no bound.
        value = value.split("%", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


class ClientIpResolver:
    """Find the client IP of a request by the trusted-proxy rule.

    The socket peer is the client, unless the peer is one of
    ``trusted_proxies`` (addresses or CIDR ranges). Then ``CF-Connecting-IP``,
    ``X-Real-IP`` or the right-most ``X-Forwarded-For`` hop that is not itself
    a trusted proxy is used, in that order. Headers from an untrusted peer are
    ignored, so a client cannot spoof its address.

    A request over a Unix socket has no peer address. The entry ``unix``
    trusts such a peer (a proxy such as nginx in front of a socket-bound
    server); without it, the client of such a request stays unknown (None).
    """

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        networks = [p for p in trusted_proxies if p.strip().lower() != UNIX_PEER]
        self.trust_unix = len(networks) != len(trusted_proxies)
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in networks)
        self._trusted = lru_cache(maxsize=4096)(self._is_trusted)
        self._warned = False

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            _log.warning(
                "a request came without a client address (a Unix socket?): its client "
                "is unknown, and such callers share rate-limit and login-throttle "
                "counters; if a proxy forwards the address, add 'unix' to "
                "http.trusted_proxies"
            )

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def __call__(self, scope: Scope) -> str | None:
        client = scope.get("client")
        peer: str | None = str(client[0]) if client and client[0] else None
        if peer is None:
            if not self.trust_unix:
                self._warn_once()
                return None
        elif not self.networks:
            return peer
        else:
            peer_ip = _parse(peer)
            if peer_ip is None or not self._trusted(peer_ip):
                return peer
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in (b"cf-connecting-ip", b"x-real-ip", b"x-forwarded-for"):
                text = value.decode("latin-1")
                # Repeated X-Forwarded-For headers form one list, in order.
                headers[name] = f"{headers[name]},{text}" if name in headers else text
        for name in (b"cf-connecting-ip", b"x-real-ip"):
            candidate = _parse(headers.get(name, ""))
            if candidate is not None:
                return str(candidate)
        hops = [_parse(hop) for hop in headers.get(b"x-forwarded-for", "").split(",")]
        for hop in reversed(hops):
            if hop is None:
                break
            if not self._trusted(hop):
                return str(hop)
        return peer
