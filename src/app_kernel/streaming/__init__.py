"""Concurrent stream limits: at most N open streams per user, across every server.

See :class:`StreamLeaseLimiter` for the mechanism and :func:`stream_lease` /
:func:`lease_streaming_response` for holding a lease for a stream's life.
"""

from __future__ import annotations

from app_kernel.streaming.errors import StreamLimitExceeded
from app_kernel.streaming.leases import LeaseAttempt, StreamLeaseLimiter
from app_kernel.streaming.lifecycle import (
    LeasedStreamingResponse,
    StreamLease,
    can_start_stream,
    format_sse,
    get_active_streams,
    lease_streaming_response,
    stream_lease,
)

__all__ = (
    "LeaseAttempt",
    "LeasedStreamingResponse",
    "StreamLease",
    "StreamLeaseLimiter",
    "StreamLimitExceeded",
    "can_start_stream",
    "format_sse",
    "get_active_streams",
    "lease_streaming_response",
    "stream_lease",
)
