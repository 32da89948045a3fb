"""Celery runtime of the email router (``celery -A workers worker|beat|flower``)."""
