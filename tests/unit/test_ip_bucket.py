"""What per-client limits count: the IPv4 address, or the IPv6 /64."""

from __future__ import annotations

import pytest

from app_kernel._ip_bucket import limit_bucket


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # an IPv4 client on a dual-stack socket
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
        ("not:an:address", "not:an:address"),
    ],
)
def test_buckets(address: str, bucket: str) -> None:
    assert limit_bucket(address) == bucket
