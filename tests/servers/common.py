"""Helpers shared by the server fixtures: free ports, bounded waits, skip-or-fail.

They live in the installed package (:mod:`router.testing.servers`) so that the provider kit
uses the same ones; this module keeps the names the fixtures import.
"""

from __future__ import annotations

from router.testing.servers import IN_CI, free_port, port_open, require, wait_for

__all__ = ["IN_CI", "free_port", "port_open", "require", "wait_for"]
