"""API keys as the code sees them: each key's policy (its limits and default priority, declared in
config.API_KEYS), and the fingerprint a task records instead of the key."""

from __future__ import annotations

import hashlib

from config import PRIORITIES, KeyPolicy, Priority

__all__ = ["PRIORITIES", "KeyPolicy", "Priority", "fingerprint"]


def fingerprint(key: str) -> str:
    """What a task (and a key's limit state) records of the key that uploaded it, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
