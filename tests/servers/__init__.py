"""Fixtures that start real servers (Redis, Dovecot, aiosmtpd, the CRM simulator) for tests."""
