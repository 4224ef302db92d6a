"""The address a per-client limit counts: one IPv4 address, or one IPv6 /64.

A single IPv6 host usually holds a whole /64 (SLAAC and privacy addresses
hand out new ones at will), so counting each address apart lets one client
spread its attempts over as many addresses as it likes. Limits on anonymous
callers (login throttling, rate limits) therefore count the /64.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

__all__ = ("limit_bucket",)


@lru_cache(maxsize=4096)
def _v6_bucket(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])  # no zone id
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def limit_bucket(address: str) -> str:
    """``address`` for IPv4 (and anything unparsable); its ``/64`` network for IPv6."""
    return _v6_bucket(address) if ":" in address else address
