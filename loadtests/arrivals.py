"""Arrival processes: the seeded send times of an open-loop run.

Why open loop: a closed-loop client (N users, each waiting for its answer before asking again) slows down
exactly when the server does, so it never shows the queueing that a real population of users causes
("coordinated omission").  Here every send time is fixed before the run from ``--rate``/``--burstiness``/
``--profile`` and ``--seed``: a run is reproducible, and its schedule can be recorded and replayed.

Gaps follow vLLM's ``vllm bench serve`` (vllm/benchmarks/serve.py, ``get_request``): gamma with
shape = burstiness and scale = 1 / (rate * burstiness).  Burstiness 1 is a Poisson process, below 1 is
burstier, above 1 more regular; the mean rate is ``rate`` in every case.  ``constant`` sends every 1/rate s.
As in vLLM the first request goes out one gap after the start.  One difference: for a fixed number of
requests vLLM rescales all gaps so that the last one lands exactly at N/rate; here gaps are left as drawn,
so the schedule of the first N requests does not depend on N (a longer run extends a shorter one).

Rate profiles (``step``, ``ramp``, ``square``) vary the rate over time, for autoscaling tests.  They use time
rescaling: unit-mean gaps are drawn as above and mapped through the inverse of the cumulative rate
Λ(t) = ∫₀ᵗ r(u) du.  The result is a non-homogeneous process whose rate at time t is r(t), with the same
burstiness.  A constant ``--rate`` is the one-segment profile, so there is a single code path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

ArrivalKind = Literal["poisson", "gamma", "constant"]
_BATCH = 1024


@dataclass(frozen=True, slots=True)
class Segment:
    """Rate going linearly from ``r0`` at ``start`` to ``r1`` at ``end`` (``end`` may be infinite)."""

    start: float
    end: float
    r0: float
    r1: float

    @property
    def mass(self) -> float:
        """Expected arrivals in the segment: ∫ r over it."""
        if math.isinf(self.end):
            return 0.0 if self.r0 == 0 else math.inf
        return (self.r0 + self.r1) / 2 * (self.end - self.start)

    def rate_at(self, t: float) -> float:
        if math.isinf(self.end) or self.end == self.start:
            return self.r0
        return self.r0 + (self.r1 - self.r0) * (t - self.start) / (self.end - self.start)

    def offset_for(self, x: float) -> float:
        """Time s after ``start`` at which ∫ r from ``start`` reaches ``x`` (0 <= x <= mass)."""
        k = 0.0 if math.isinf(self.end) or self.end == self.start else (self.r1 - self.r0) / (self.end - self.start)
        # r0*s + k*s²/2 = x, in the form that is stable for k -> 0 and for r0 = 0.
        return 2 * x / (self.r0 + math.sqrt(max(self.r0 * self.r0 + 2 * k * x, 0.0)))


@dataclass(frozen=True, slots=True)
class RateProfile:
    """A rate over time, in requests/s.  Build one with :func:`parse_profile` or :meth:`constant`."""

    kind: Literal["constant", "step", "ramp", "square"]
    points: tuple[tuple[float, float], ...] = ()  # (time_s, rate) for step and ramp
    low: float = 0.0  # square wave
    high: float = 0.0
    period: float = 0.0
    duty: float = 0.5  # fraction of each period spent at ``high`` (the low part comes first)

    @classmethod
    def constant(cls, rate: float) -> RateProfile:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        return cls("constant", ((0.0, float(rate)),))

    def segments(self) -> Iterator[Segment]:
        """The profile as consecutive linear segments from t = 0; the last one is infinite (or it never ends)."""
        if self.kind == "square":
            t, low_len = 0.0, self.period * (1 - self.duty)
            while True:
                yield Segment(t, t + low_len, self.low, self.low)
                yield Segment(t + low_len, t + self.period, self.high, self.high)
                t += self.period
        pts = self.points
        for (t0, r0), (t1, r1) in itertools.pairwise(pts):
            yield Segment(t0, t1, r0, r1 if self.kind == "ramp" else r0)
        yield Segment(pts[-1][0], math.inf, pts[-1][1], pts[-1][1])

    def rate_at(self, t: float) -> float:
        for seg in self.segments():
            if t < seg.end:
                return seg.rate_at(t)
        return 0.0  # not reached: the last segment is infinite

    def cumulative(self, t: float) -> float:
        """Λ(t): expected arrivals in [0, t]."""
        total = 0.0
        for seg in self.segments():
            if t <= seg.start:
                break
            end = min(t, seg.end)
            total += (seg.r0 + seg.rate_at(end)) / 2 * (end - seg.start)
        return total

    def describe(self) -> str:
        if self.kind == "square":
            return f"square {self.low:g}->{self.high:g} req/s, period {self.period:g}s, duty {self.duty:g}"
        if self.kind == "constant":
            return f"{self.points[0][1]:g} req/s"
        return f"{self.kind} " + ", ".join(f"{r:g}@{t:g}s" for t, r in self.points)


class _InverseCumulative:
    """Λ⁻¹ for increasing arguments: walks the segments forward once, so a whole schedule costs O(n)."""

    def __init__(self, profile: RateProfile) -> None:
        self._segments = profile.segments()
        self._seg: Segment | None = next(self._segments)
        self._base = 0.0  # Λ at the current segment's start

    def __call__(self, x: float) -> float:
        while self._seg is not None and x > self._base + self._seg.mass:
            self._base += self._seg.mass
            self._seg = next(self._segments, None)
        if self._seg is None or (self._seg.mass == 0 and math.isinf(self._seg.end)):
            return math.inf  # the rate dropped to zero for good: no more arrivals
        return self._seg.start + self._seg.offset_for(x - self._base)


@dataclass(frozen=True, slots=True)
class ArrivalProcess:
    """What ``--arrival/--rate/--burstiness/--profile`` asked for."""

    profile: RateProfile
    kind: ArrivalKind = "poisson"
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")

    def unit_gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n gaps of mean 1 in operational time (Λ units)."""
        if self.kind == "constant":
            return np.ones(n)
        if self.kind == "poisson":
            return rng.exponential(1.0, n)
        # vLLM: np.random.gamma(shape=burstiness, scale=1 / (request_rate * burstiness)); here before dividing by rate.
        return rng.gamma(shape=self.burstiness, scale=1.0 / self.burstiness, size=n)

    def times(self, seed: int, *, duration: float | None = None, num_requests: int | None = None) -> list[float]:
        """Send offsets in seconds from the start, increasing; stops at ``duration`` or ``num_requests``."""
        if duration is None and num_requests is None:
            raise ValueError("an open-loop schedule needs a duration or a number of requests")
        rng = np.random.default_rng(seed)
        inverse = _InverseCumulative(self.profile)
        out: list[float] = []
        cum = 0.0
        while True:
            for gap in self.unit_gaps(rng, _BATCH):
                cum += float(gap)
                t = inverse(cum)
                if math.isinf(t) or (duration is not None and t >= duration):
                    return out
                out.append(t)
                if num_requests is not None and len(out) >= num_requests:
                    return out

    def describe(self) -> str:
        shape = f"gamma(burstiness={self.burstiness:g})" if self.kind == "gamma" else self.kind
        return f"{shape} at {self.profile.describe()}"


def _points(body: str, spec: str) -> tuple[tuple[float, float], ...]:
    pts: list[tuple[float, float]] = []
    for part in body.split(","):
        rate_s, sep, t_s = part.strip().partition("@")
        if not sep:
            raise ValueError(f"profile {spec!r}: each point is RATE@TIME_S, got {part!r}")
        rate, t = float(rate_s), float(t_s)
        if rate < 0 or t < 0 or not (math.isfinite(rate) and math.isfinite(t)):
            raise ValueError(f"profile {spec!r}: rates and times must be finite and >= 0, got {part!r}")
        pts.append((t, rate))
    if pts[0][0] != 0:
        raise ValueError(f"profile {spec!r}: the first point must be at time 0")
    if any(b[0] <= a[0] for a, b in itertools.pairwise(pts)):
        raise ValueError(f"profile {spec!r}: point times must increase")
    if all(r == 0 for _, r in pts):
        raise ValueError(f"profile {spec!r}: every rate is 0")
    return tuple(pts)


def parse_profile(spec: str) -> RateProfile:
    """Parse ``step:5@0,50@10,5@40``, ``ramp:1@0,20@60`` or ``square:LOW,HIGH,PERIOD_S[,DUTY]``.

    ``step`` holds each rate from its time to the next point's; ``ramp`` goes linearly between points; both
    keep the last rate afterwards.  ``square`` alternates LOW for (1-DUTY)*PERIOD then HIGH for DUTY*PERIOD.
    """
    kind, sep, body = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or not body.strip():
        raise ValueError(f"profile {spec!r}: expected KIND:ARGS, e.g. step:5@0,50@10")
    if kind in ("step", "ramp"):
        return RateProfile(kind, _points(body, spec))  # type: ignore[arg-type]
    if kind == "square":
        try:
            nums = [float(x) for x in body.split(",")]
        except ValueError:
            raise ValueError(f"profile {spec!r}: square:LOW,HIGH,PERIOD_S[,DUTY] takes numbers") from None
        if len(nums) not in (3, 4):
            raise ValueError(f"profile {spec!r}: square:LOW,HIGH,PERIOD_S[,DUTY]")
        low, high, period = nums[:3]
        duty = nums[3] if len(nums) == 4 else 0.5
        if low < 0 or high <= 0 or period <= 0 or not 0 < duty < 1:
            raise ValueError(f"profile {spec!r}: need LOW >= 0, HIGH > 0, PERIOD > 0 and 0 < DUTY < 1")
        return RateProfile("square", low=low, high=high, period=period, duty=duty)
    raise ValueError(f"profile {spec!r}: unknown kind {kind!r}; use step, ramp or square")
