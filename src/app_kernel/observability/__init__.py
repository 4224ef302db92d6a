"""Logging, health and (with later issues) metrics and audit."""

from app_kernel.observability.logging import get_logger, log_context

__all__ = ("get_logger", "log_context")
