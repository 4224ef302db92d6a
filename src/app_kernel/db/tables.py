"""The metadata every kernel table is declared on; created at start-up if missing."""

from __future__ import annotations

from sqlalchemy import MetaData

__all__ = ("kernel_metadata",)

kernel_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
