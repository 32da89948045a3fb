"""Celery runtime of the email router (``celery -A workers worker|beat|flower``).

``celery -A workers`` finds :data:`celery`, the application built in :mod:`workers.app` (the name
``app`` stays the submodule, so ``workers.app.create_app`` keeps working).
"""

from __future__ import annotations

from workers.app import app as celery

__all__ = ["celery"]
