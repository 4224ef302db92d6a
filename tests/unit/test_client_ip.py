"""The trusted-proxy rule's address parsing."""

from __future__ import annotations

import json

import pytest

from _log_capture import configured_logging
from app_kernel.web.client_ip import ClientIpResolver


def _scope(peer: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "client": (peer, 4000), "headers": list(headers)}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"203.0.113.9", "203.0.113.9"),
        (b"203.0.113.9:5123", "203.0.113.9"),
        (b"[2001:db8::9]:5123", "2001:db8::9"),
        (b"2001:db8::9", "2001:db8::9"),
        # A zone index names an interface of the sender's host: it is not part of
        # the client's address, and its text is anything of any length.
        (b"fe80::1%eth0", "fe80::1"),
        (b"2001:db8::9%" + b"a" * 5000, "2001:db8::9"),
        (b"[2001:db8::9%eth0]:5123", "2001:db8::9"),
    ],
)
def test_a_forwarded_address_is_read_without_port_or_zone(header: bytes, expected: str) -> None:
    resolver = ClientIpResolver(["10.0.0.0/8"])
    assert resolver(_scope("10.0.0.2", (b"x-real-ip", header))) == expected
    assert resolver(_scope("10.0.0.2", (b"x-forwarded-for", header))) == expected


def test_a_zone_index_does_not_make_a_trusted_proxy_untrusted() -> None:
    resolver = ClientIpResolver(["fe80::/64"])
    scope = _scope("fe80::2%eth0", (b"x-forwarded-for", b"203.0.113.9"))
    assert resolver(scope) == "203.0.113.9"


def _socket_scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    """A request over a Unix socket: servers give it no client address."""
    return {"type": "http", "client": None, "headers": list(headers)}


def test_a_trusted_unix_socket_peer_forwards_the_client() -> None:
    """nginx in front of a socket-bound server: without this, every anonymous
    caller shared one client ("unknown"), so one rate-limit bucket."""
    resolver = ClientIpResolver(["UNIX", "10.0.0.0/8"])
    forwarded = (b"x-forwarded-for", b"198.51.100.7, 203.0.113.9")
    assert resolver(_socket_scope(forwarded)) == "203.0.113.9"
    assert resolver(_socket_scope((b"x-real-ip", b"203.0.113.4"))) == "203.0.113.4"
    assert resolver(_socket_scope()) is None


def test_an_untrusted_unix_socket_peer_forwards_nothing_and_says_so_once() -> None:
    resolver = ClientIpResolver(["10.0.0.0/8"])
    with configured_logging(fmt="json") as out:
        assert resolver(_socket_scope((b"x-forwarded-for", b"203.0.113.9"))) is None
        assert resolver(_socket_scope()) is None
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["level"] == "warning"
    assert "add 'unix' to http.trusted_proxies" in line["event"]
    # Trusting the socket trusts no network peer.
    resolver = ClientIpResolver(["unix"])
    assert resolver(_scope("198.51.100.7", (b"x-real-ip", b"203.0.113.9"))) == "198.51.100.7"
