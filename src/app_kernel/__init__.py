"""app_kernel: runtime infrastructure for FastAPI services."""

from app_kernel.app import create_service, init_app_kernel
from app_kernel.auth import UserIdentity, get_current_user, get_optional_user, require_admin
from app_kernel.errors import (
    BackendUnavailable,
    KernelError,
    KernelNotInitialized,
    MissingDependencyError,
    SettingsError,
)
from app_kernel.jobs import JobContext, JobRegistry, get_job_client
from app_kernel.kernel import Kernel
from app_kernel.observability.logging import get_logger, log_context
from app_kernel.service_config import ServiceConfig
from app_kernel.settings import FeatureSettings, KernelSettings

__version__ = "0.1.0"

__all__ = (
    "BackendUnavailable",
    "FeatureSettings",
    "JobContext",
    "JobRegistry",
    "Kernel",
    "KernelError",
    "KernelNotInitialized",
    "KernelSettings",
    "MissingDependencyError",
    "ServiceConfig",
    "SettingsError",
    "UserIdentity",
    "create_service",
    "get_current_user",
    "get_job_client",
    "get_logger",
    "get_optional_user",
    "init_app_kernel",
    "log_context",
    "require_admin",
)
