"""Logging, health, metrics, request metrics, tracing and audit."""

from app_kernel.observability.audit import AuditLogger, get_audit
from app_kernel.observability.context import current_request_id
from app_kernel.observability.logging import get_logger, log_context
from app_kernel.observability.metrics import MetricMisuse, Metrics, get_metrics
from app_kernel.observability.request_metrics_store import RequestMetricsStore
from app_kernel.observability.tracing import current_trace_id

__all__ = (
    "AuditLogger",
    "MetricMisuse",
    "Metrics",
    "RequestMetricsStore",
    "current_request_id",
    "current_trace_id",
    "get_audit",
    "get_logger",
    "get_metrics",
    "log_context",
)
