"""The one ``MetaData`` every store table belongs to (its own module so the table modules can share it
without importing each other)."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData()
