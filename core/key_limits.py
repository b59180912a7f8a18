"""Per-key upload limits (API_KEYS tables): `uploads_per_minute` and `max_pending`, decided in
PostgreSQL so that every API replica shares them, in one round trip an upload.

- `uploads_per_minute` is a GCRA cell (the generic cell rate algorithm, a token bucket kept as one
  timestamp): `api_key_rates.tat` moves one interval (60 s / the rate) later for each admitted
  upload, and an upload is admitted while `tat` stays within a minute of now. So a key may send its
  whole minute's quota at once, then one upload each interval; an atomic upsert decides, whichever
  process asks, with PostgreSQL's clock for all of them.
- `max_pending` counts the key's unfinished tasks (indexed: ix_image_tasks_owner_unfinished), at
  most `max_pending` of them. It is checked when an upload starts, so uploads of the key already in
  flight may still land: the count can pass the limit by at most the key's concurrent uploads.

The one statement reads `image_tasks` (the count) as well as its own table, an exception to
core.tasks owning every statement on that table: one round trip per upload is worth it.

What a verdict says is also what the RateLimit headers say (the IETF httpapi ratelimit-headers
draft): `quota_policies` and `service_limits` give their structured-field values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import asyncpg

from core.api_keys import KeyPolicy, fingerprint
from core.db import POOL_TIMEOUT_SECONDS, is_database_unavailable, released_under_us
from core.models import UNFINISHED_SQL
from core.tasks import DatabaseUnavailable

WINDOW_SECONDS = 60
# Policy names, as the RateLimit-Policy and RateLimit fields give them.
MINUTE_POLICY = "minute"
PENDING_POLICY = "pending"


class Refusal(StrEnum):
    """Why an upload was refused; None in a verdict that admits it."""

    # A limit of 0: this key may never upload.
    FORBIDDEN = "forbidden"
    RATE = "rate"
    PENDING = "pending"


@dataclass(frozen=True)
class Verdict:
    """One upload's admission, and the state of the key's limits after it."""

    policy: KeyPolicy
    refusal: Refusal | None
    # The uploads left this minute (after this one, if admitted), and the whole seconds within
    # which no more than that can be used (None without uploads_per_minute).
    rate_remaining: int | None = None
    rate_window: int | None = None
    # Refused for the rate: the seconds until one more upload is admitted.
    rate_wait: float | None = None
    # The unfinished tasks the key may still add (after this one, if admitted).
    pending_remaining: int | None = None

    @property
    def admitted(self) -> bool:
        return self.refusal is None

    def quota_policies(self) -> str:
        """The RateLimit-Policy field: a List of the key's quota policies."""
        items = []
        if self.policy.uploads_per_minute is not None:
            items.append(f'"{MINUTE_POLICY}";q={self.policy.uploads_per_minute};w={WINDOW_SECONDS}')
        if self.policy.max_pending is not None:
            # Unfinished tasks: units taken by an upload and given back when its task ends.
            items.append(f'"{PENDING_POLICY}";q={self.policy.max_pending};qu="concurrent-requests"')
        return ", ".join(items)

    def service_limits(self) -> str:
        """The RateLimit field: what is left under each policy (`t` only for the timed one)."""
        items = []
        if self.rate_remaining is not None:
            window = "" if self.rate_window is None else f";t={self.rate_window}"
            items.append(f'"{MINUTE_POLICY}";r={self.rate_remaining}{window}')
        if self.pending_remaining is not None:
            items.append(f'"{PENDING_POLICY}";r={self.pending_remaining}')
        return ", ".join(items)


# The key's unfinished tasks, counted up to the limit only: the index is read no further.
_PENDING = f"""
SELECT count(*) AS n FROM (
    SELECT 1 FROM image_tasks WHERE owner = $1 AND status IN ({UNFINISHED_SQL}) LIMIT $4
) AS unfinished
"""
# $1 owner, $2 the emission interval, $3 the window, $4 max_pending. The insert's own
# `last_admitted` carries the pending verdict into the update (as `excluded`); an upload refused
# for either reason leaves `tat` where it was. The update's expressions all see the row as it was.
_ADMIT_BOTH = f"""
WITH pending AS ({_PENDING})
INSERT INTO api_key_rates AS r (owner, tat, last_admitted)
SELECT $1, CASE WHEN n < $4 THEN now() + $2 ELSE now() END, n < $4 FROM pending
ON CONFLICT (owner) DO UPDATE SET
    last_admitted = excluded.last_admitted AND greatest(r.tat, now()) + $2 <= now() + $3,
    tat = CASE WHEN excluded.last_admitted AND greatest(r.tat, now()) + $2 <= now() + $3
               THEN greatest(r.tat, now()) + $2 ELSE r.tat END
RETURNING r.last_admitted, r.tat, now() AS now, (SELECT n FROM pending) AS pending
"""
_ADMIT_RATE = """
INSERT INTO api_key_rates AS r (owner, tat, last_admitted) VALUES ($1, now() + $2, true)
ON CONFLICT (owner) DO UPDATE SET
    last_admitted = greatest(r.tat, now()) + $2 <= now() + $3,
    tat = CASE WHEN greatest(r.tat, now()) + $2 <= now() + $3 THEN greatest(r.tat, now()) + $2 ELSE r.tat END
RETURNING r.last_admitted, r.tat, now() AS now
"""
_COUNT_PENDING = _PENDING.replace("$4", "$2")


def _forbidden(policy: KeyPolicy) -> Verdict:
    """A limit of 0: nothing to ask the database; every upload of the key is refused."""
    return Verdict(
        policy,
        Refusal.FORBIDDEN,
        rate_remaining=None if policy.uploads_per_minute is None else 0,
        pending_remaining=None if policy.max_pending is None else 0,
    )


_MICROS = 1_000_000


@dataclass(frozen=True)
class _Cell:
    """A key's rate in whole microseconds (PostgreSQL's resolution, so Python and the statement
    agree to the last one): the interval between uploads, and the window as that many intervals
    (60 s give or take the rounding of the interval; with exactly 60 s, a rate that does not divide
    it would lose its last upload of a burst)."""

    rate: int

    @property
    def interval(self) -> int:
        return round(WINDOW_SECONDS * _MICROS / self.rate)

    @property
    def window(self) -> int:
        return self.interval * self.rate

    def state(self, admitted: bool, ahead: timedelta) -> tuple[int, int, float | None]:
        """The uploads left, the whole seconds within which no more than those can be used, and
        (refused) the seconds until the next one; `ahead` is the cell's `tat` less now."""
        ahead_us = ahead // timedelta(microseconds=1)
        if not admitted:
            wait = ahead_us + self.interval - self.window
            return 0, wait // _MICROS, wait / _MICROS
        slack = self.window - ahead_us
        if slack >= self.window:  # idle: the whole quota, and the next one an interval after it
            return self.rate, self.interval // _MICROS, None
        remaining = slack // self.interval
        # The next upload beyond `remaining` accrues when the slack reaches another interval.
        return remaining, (self.interval * (remaining + 1) - slack) // _MICROS, None


async def admit(pool: asyncpg.Pool, policy: KeyPolicy) -> Verdict | None:
    """Admit one upload of a key, or refuse it: None for a key without limits (nothing asked).
    Raises DatabaseUnavailable when the database cannot be reached."""
    if not policy.limited:
        return None
    rate, most = policy.uploads_per_minute, policy.max_pending
    if rate == 0 or most == 0:
        return _forbidden(policy)
    owner = fingerprint(policy.key)
    try:
        async with pool.acquire(timeout=POOL_TIMEOUT_SECONDS) as connection:
            if rate is None:
                assert most is not None
                pending = await connection.fetchval(_COUNT_PENDING, owner, most)
                row = None
            else:
                cell = _Cell(rate)
                step, span = timedelta(microseconds=cell.interval), timedelta(microseconds=cell.window)
                if most is None:
                    row = await connection.fetchrow(_ADMIT_RATE, owner, step, span)
                    pending = None
                else:
                    row = await connection.fetchrow(_ADMIT_BOTH, owner, step, span, most)
                    pending = row["pending"]
    except Exception as exc:
        # The connection is used only inside its own `async with` above: released under it, it was
        # closed by the server (a restart), not by us.
        if is_database_unavailable(exc) or released_under_us(exc):
            raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        raise
    pending_refused = pending is not None and most is not None and pending >= most
    pending_left = None if most is None or pending is None else max(most - pending - 1, 0)
    if row is None:
        only = Refusal.PENDING if pending_refused else None
        return Verdict(policy, only, pending_remaining=0 if pending_refused else pending_left)
    assert rate is not None
    admitted = row["last_admitted"]
    ahead = row["tat"] - row["now"]
    refusal: Refusal | None
    if pending_refused:
        # Refused before the rate was consulted (its cell did not move): it stands as it was,
        # which reads like the state after an admission.
        remaining, window, wait = _Cell(rate).state(True, ahead)
        refusal, wait, pending_left = Refusal.PENDING, None, 0
    else:
        remaining, window, wait = _Cell(rate).state(admitted, ahead)
        refusal = None if admitted else Refusal.RATE
        if not admitted and pending_left is not None:
            pending_left += 1  # this upload, refused, will not be one of them
    return Verdict(
        policy,
        refusal,
        rate_remaining=remaining,
        rate_window=window,
        rate_wait=wait,
        pending_remaining=pending_left,
    )
