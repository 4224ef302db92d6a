"""The client's address, believing proxy headers only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from app_kernel.types import Scope

__all__ = ("ClientIpResolver",)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    """

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        self._trusted = lru_cache(maxsize=4096)(self._is_trusted)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def __call__(self, scope: Scope) -> str | None:
        client = scope.get("client")
        peer: str | None = str(client[0]) if client else None
        if not self.networks or peer is None:
            return peer
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
