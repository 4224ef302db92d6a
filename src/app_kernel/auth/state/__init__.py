"""Auth state that must be shared by every process: refresh families, revocation,
failed-login counters. Redis or the embedded SQLite file."""

from app_kernel.auth.state.base import AuthStateBackend, RotateOutcome, UserRevocation

__all__ = ("AuthStateBackend", "RotateOutcome", "UserRevocation")
