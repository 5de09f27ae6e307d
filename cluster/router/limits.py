"""Per-tenant limits: requests per minute, tokens per minute, concurrent requests.

Each limited tenant has two token buckets that refill continuously (capacity =
the per-minute figure, so a tenant may burst up to one minute's allowance) and
a concurrency count.  A request is admitted only when all three allow it;
otherwise it is refused at once with the time after which a retry can succeed
(HTTP 429 + ``Retry-After`` / gRPC RESOURCE_EXHAUSTED): never queued behind
another tenant's limit, never a timeout.

Tokens are charged up front as an estimate (prompt characters / 4 +
max_tokens) and reconciled when the request ends with the real usage, so a
request that stops early gives its unused allowance back and a long prompt that
tokenised larger than estimated is charged in full.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.router.auth import Tenant

CHARS_PER_TOKEN = 4


class LimitExceeded(Exception):
    def __init__(self, what: str, retry_after_s: float, limit: str = "") -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(f"tenant limit exceeded: {what}; retry after {self.retry_after_s} s")
        self.what = what
        #: Which limit: requests_per_minute, tokens_per_minute or max_concurrent.
        self.limit = limit


@dataclass(slots=True)
class Bucket:
    capacity: float
    per_s: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.per_s)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if now); amounts above capacity wait for a full bucket."""
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.per_s


@dataclass(slots=True)
class TenantState:
    requests: Bucket | None
    tokens: Bucket | None
    max_concurrent: int | None
    in_flight: int = 0
    refused: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Grant:
    """An admitted request's charge; :meth:`Limiter.release` settles it."""

    tenant: str
    charged_tokens: int
    released: bool = False


def estimate_tokens(prompt_chars: int, max_tokens: int) -> int:
    return prompt_chars // CHARS_PER_TOKEN + max_tokens


class Limiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[str, TenantState] = {}

    def _state(self, tenant: Tenant) -> TenantState:
        st = self._states.get(tenant.name)
        spec = tenant.spec
        if st is None or self._stale(st, tenant):
            now = self._clock()
            rpm, tpm = spec.requests_per_minute, spec.tokens_per_minute
            new = TenantState(
                requests=Bucket(rpm, rpm / 60, rpm, now) if rpm else None,
                tokens=Bucket(tpm, tpm / 60, tpm, now) if tpm else None,
                max_concurrent=spec.max_concurrent,
                in_flight=st.in_flight if st else 0,
                refused=st.refused if st else {},
            )
            # A reload that changes limits must not hand out a fresh full bucket:
            # keep what was used, capped at the new capacity.
            if st is not None:
                for old_b, new_b in ((st.requests, new.requests), (st.tokens, new.tokens)):
                    if old_b is not None and new_b is not None:
                        old_b.refill(now)
                        new_b.level = min(new_b.capacity, old_b.level)
            st = new
            self._states[tenant.name] = st
        return st

    @staticmethod
    def _stale(st: TenantState, tenant: Tenant) -> bool:
        # Limits changed by a key-file reload take effect at once.
        spec = tenant.spec
        return (
            (st.requests.capacity if st.requests else None) != spec.requests_per_minute
            or (st.tokens.capacity if st.tokens else None) != spec.tokens_per_minute
            or st.max_concurrent != spec.max_concurrent
        )

    def acquire(self, tenant: Tenant, estimated_tokens: int) -> Grant:
        st = self._state(tenant)
        now = self._clock()
        if st.max_concurrent is not None and st.in_flight >= st.max_concurrent:
            self._refuse(st, "max_concurrent")
            raise LimitExceeded(f"{st.max_concurrent} concurrent requests", 1.0, "max_concurrent")
        if st.requests is not None:
            st.requests.refill(now)
            wait = st.requests.wait_for(1)
            if wait > 0:
                self._refuse(st, "requests_per_minute")
                raise LimitExceeded(f"{int(st.requests.capacity)} requests per minute", wait, "requests_per_minute")
        if st.tokens is not None:
            st.tokens.refill(now)
            wait = st.tokens.wait_for(estimated_tokens)
            if wait > 0:
                self._refuse(st, "tokens_per_minute")
                raise LimitExceeded(f"{int(st.tokens.capacity)} tokens per minute", wait, "tokens_per_minute")
        if st.requests is not None:
            st.requests.level -= 1
        if st.tokens is not None:
            st.tokens.level -= estimated_tokens
        st.in_flight += 1
        return Grant(tenant.name, estimated_tokens)

    def release(self, grant: Grant, used_tokens: int | None = None, *, refund_request: bool = False) -> None:
        """End of request: free the concurrency slot and settle tokens (None: keep the estimate).

        ``refund_request``: the request never ran (refused later, e.g. by a full
        admission queue), so it does not count against requests per minute.
        """
        if grant.released:
            return
        grant.released = True
        st = self._states.get(grant.tenant)
        if st is None:
            return
        st.in_flight -= 1
        if refund_request and st.requests is not None:
            st.requests.refill(self._clock())
            st.requests.level = min(st.requests.capacity, st.requests.level + 1)
        if st.tokens is not None and used_tokens is not None:
            st.tokens.refill(self._clock())
            # May go negative: an under-estimate is paid back from future allowance.
            st.tokens.level = min(st.tokens.capacity, st.tokens.level + grant.charged_tokens - used_tokens)

    def _refuse(self, st: TenantState, what: str) -> None:
        st.refused[what] = st.refused.get(what, 0) + 1

    def in_flight(self, tenant: str) -> int:
        st = self._states.get(tenant)
        return st.in_flight if st else 0

    def total_in_flight(self) -> int:
        return sum(st.in_flight for st in self._states.values())

    def refused(self) -> dict[str, dict[str, int]]:
        return {name: dict(st.refused) for name, st in self._states.items() if st.refused}
