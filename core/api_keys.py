"""API keys as the code sees them: each key's policy (its limits and default priority, declared in
config.API_KEYS), and the fingerprint a task records instead of the key."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from config import PRIORITIES, KeyPolicy, Priority

__all__ = ["PRIORITIES", "KeyPolicy", "Priority", "fingerprint", "policy_of"]


def fingerprint(key: str) -> str:
    """What a task (and a key's limit state) records of the key that uploaded it, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def policy_of(policies: Sequence[KeyPolicy], owner: str | None) -> KeyPolicy | None:
    """The policy of the key whose fingerprint is `owner` (for work finished after its request, as
    a resumable upload's last piece); None when keys are off or the key is gone from API_KEYS."""
    if owner is None:
        return None
    return next((policy for policy in policies if fingerprint(policy.key) == owner), None)
