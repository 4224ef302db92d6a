"""Where leases live: Redis (several hosts) or the embedded SQLite file (one host)."""

from __future__ import annotations

from app_kernel.streaming.backends.base import LeaseBackend, LeaseGrant, LeaseStatus

__all__ = ("LeaseBackend", "LeaseGrant", "LeaseStatus")
