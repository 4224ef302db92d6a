"""The kernel's SQL database (users, audit, request metrics) through SQLAlchemy."""

from app_kernel.db.session import get_db_session

__all__ = ("get_db_session",)
