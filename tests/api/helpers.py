"""Helpers of the gateway tests."""

from __future__ import annotations

#: The JWT secret of the test gateway.
SECRET = "s3cret-" + "k" * 40
