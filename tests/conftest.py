"""Pytest configuration: server fixtures are plug-ins under tests/servers/."""

pytest_plugins = [
    "tests.servers.redis_server",
    "tests.servers.dovecot",
    "tests.servers.smtp",
    "tests.servers.celery_procs",
    "tests.servers.simulator",
    "tests.servers.graphsim",
]
