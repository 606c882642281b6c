"""Limits shared by every door (Python, SQL, the command line)."""

from __future__ import annotations

MAX_TOKEN_LENGTH = 500
CHILD_ID_SEPARATOR = "::"
