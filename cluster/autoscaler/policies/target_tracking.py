"""Target tracking on per-replica load, with a TTFT-SLO guard.

Algorithm (each tick):
1. Hold when the observation is missing or older than ``stale_after_s``:
   unknown load is never read as zero, so no scale-down on no data.
2. Signal -> raw recommendation: ``ceil(total / target)`` where total is the
   fleet's waiting + running requests (``load``), mean KV usage x replicas
   (``kv_usage``) or generation tokens/s (``token_throughput``).  Requests the
   router holds for want of a replica count as load, so demand at zero
   replicas asks for one.  Within ``1 +- tolerance`` of the target: keep.
   Backlog correction (``load``): a queue is a stock, not a rate.  During a
   surge it grows for as long as capacity is short, and sizing the fleet for
   it overshoots (and after the new replicas drain it, it vanishes).  So load
   counts at most ``running x (completions/s + growth/s) / completions/s``:
   the requests in service scaled by how much faster they arrive than they
   finish (Little's law: arrival rate x service time), growth measured over
   ``growth_window_s``.  Without completion figures, the plain load counts.
   Settling: for ``growth_window_s`` after the ready count rises, the
   corrected load is not trusted for a scale-up.  The new replicas take in
   the queue at once (running jumps), while the completion and growth rates,
   measured over the window, still describe the smaller fleet: the product
   reads as demand that is not there (a 10x step overshot to 12 replicas for
   7 before this).  The hold lasts one window, then the rates are current.
3. TTFT guard: when the observed TTFT quantile exceeds the SLO, recommend at
   least current + 1 and never less than current (latency is bad even if the
   load signal looks fine, e.g. long prompts) -- once all replicas asked for
   are ready: while some start, the high TTFT is theirs to fix.
4. Partial data: when fewer than half the known replicas report, a scale-down
   is refused (the missing ones may be the busy ones); a scale-up still goes.
   Replicas starting: while fewer replicas are ready than asked for, no further
   scale-up (for up to ``starting_grace_s`` after the last change).  The queue
   that builds during a start-up is a stock, not a rate: sizing the fleet for
   it overshoots, and the replicas on their way will drain it.
5. Stabilise: a scale-up takes the *minimum* recommendation over the last
   ``scale_up_window_s`` (a spike must last), a scale-down the *maximum* over
   the last ``scale_down_window_s`` (a dip must last), and a scale-down also
   needs a full window of data since the policy started.
6. Limit: at most ``max_scale_up_step`` up per tick, no scale-down within
   ``cooldown_s`` of the last change, clamp to [min_replicas, max_replicas].

Failure modes: a replica that never becomes ready blocks further scale-ups
only for ``starting_grace_s``; noisy load that crosses the target both ways cannot flap
(tolerance, then the down window's maximum, then the cooldown); a source
that dies freezes the count (hold) instead of shrinking the fleet; a TTFT
spike from one slow request can add one replica (bounded by max_replicas and
undone after the down window).
"""

from __future__ import annotations

import math
from collections import deque

from cluster.autoscaler.policies.base import ScalingPolicy
from cluster.autoscaler.types import Decision, Observation
from cluster.config import ScalingPolicyConfig


class TargetTracking(ScalingPolicy):
    name = "target_tracking"

    def __init__(self, cfg: ScalingPolicyConfig, stale_after_s: float = 30.0) -> None:
        self.cfg = cfg
        self.stale_after_s = stale_after_s
        self._history: deque[tuple[float, int]] = deque()
        self._first_data: float | None = None
        self._last_change = -math.inf
        self._loads: deque[tuple[float, float]] = deque()
        self._ready: int | None = None
        self._ready_rose_at = -math.inf

    def applied(self, now: float, n: int) -> None:
        self._last_change = now

    def _hold(self, current: int, reason: str, detail: str, rec: int | None = None) -> Decision:
        return Decision(current, current, "hold", reason, detail, rec)

    def _total(self, obs: Observation, current: int) -> tuple[float | None, str]:
        c = self.cfg
        demand = obs.demand or 0.0
        if c.metric == "load":
            if obs.load is None:
                return None, "no load series"
            load = obs.load + demand
            what = f"load {load:g} (incl. {demand:g} held at the router)"
            growth = self._growth(obs.at, load)
            if obs.running and obs.completion_rate and obs.completion_rate > 0:
                arriving = max(0.0, obs.completion_rate + (growth or 0.0))  # no growth seen yet: steady
                in_demand = obs.running * arriving / obs.completion_rate
                if in_demand < load:
                    rates = f"arrivals {arriving:.1f}/s / completions {obs.completion_rate:.1f}/s"
                    what += f", of which {in_demand:.1f} demand (running {obs.running:g} x {rates})"
                    load = in_demand
            return load, what
        if c.metric == "kv_usage":
            if obs.kv_usage is None:
                return (demand and c.target, f"{demand:g} requests held at zero replicas") if current == 0 else (None, "no KV series")
            n = obs.reporting_replicas or current
            return obs.kv_usage * n, f"kv usage {obs.kv_usage:.2f} x {n} replicas"
        if obs.token_throughput is None:
            return (demand and c.target, f"{demand:g} requests held at zero replicas") if current == 0 else (None, "no throughput series")
        return obs.token_throughput, f"throughput {obs.token_throughput:.1f} tok/s"

    def _growth(self, at: float, load: float) -> float | None:
        """d(load)/dt over growth_window_s (None until the window has two samples apart)."""
        self._loads.append((at, load))
        while len(self._loads) > 2 and self._loads[1][0] <= at - self.cfg.growth_window_s:
            self._loads.popleft()
        t0, l0 = self._loads[0]
        return (load - l0) / (at - t0) if at - t0 > 0 else None

    def decide(self, now: float, obs: Observation | None, current: int) -> Decision:
        c = self.cfg
        # 1. Fresh data, or hold.
        if obs is None or now - obs.at > self.stale_after_s:
            age = "no observation" if obs is None else f"newest sample {now - obs.at:.0f}s old"
            return self._hold(current, "stale_metrics", f"holding at {current}: {age}")
        total, what = self._total(obs, current)
        if total is None:
            return self._hold(current, "stale_metrics", f"holding at {current}: {what}")
        self._note_data(now, obs)
        # 2 + 3. Target tracking, then the TTFT guard.
        raw, reason, detail = self._recommend(obs, current, total, what)
        # 4. Partial data.
        known = obs.known_replicas
        if raw < current and known and obs.reporting_replicas * 2 < known:
            self._history.append((now, current))
            return self._hold(current, "partial_metrics", f"{detail}; only {obs.reporting_replicas}/{known} replicas report", raw)
        self._remember(now, raw)
        # Bounds first: outside [min, max] is corrected at once.
        if current < c.min_replicas:
            return Decision(current, c.min_replicas, "scale_up", "min_replicas", f"{detail}; below min_replicas", raw)
        if current > c.max_replicas:
            return Decision(current, c.max_replicas, "scale_down", "max_replicas", f"{detail}; above max_replicas", raw)
        # 5 + 6. Stabilise and limit.
        if raw > current:
            corrected = c.metric == "load" and bool(obs.running) and bool(obs.completion_rate)
            return self._scale_up(now, current, raw, reason, detail, known, corrected)
        if raw < current:
            return self._scale_down(now, current, raw, reason, detail)
        return self._hold(current, reason, detail, raw)

    def _note_data(self, now: float, obs: Observation) -> None:
        """Remember when data first came and when the ready count last rose."""
        if self._first_data is None:
            self._first_data = now
        if obs.known_replicas is not None:
            if self._ready is not None and obs.known_replicas > self._ready:
                self._ready_rose_at = now
            self._ready = obs.known_replicas

    def _recommend(self, obs: Observation, current: int, total: float, what: str) -> tuple[int, str, str]:
        """The raw replica count for ``total`` (within tolerance: ``current``), with its reason and detail."""
        c = self.cfg
        reason = "target_tracking"
        if current > 0 and abs(total / (current * c.target) - 1) <= c.tolerance:
            raw = current
        else:
            raw = math.ceil(total / c.target - 1e-9)
        if (obs.demand or 0) > 0 and raw < 1:
            raw, reason = 1, "demand_at_zero"
        detail = f"{what}, target {c.target:g}/replica -> {raw}"
        # TTFT guard: only once every replica asked for is serving (while some
        # start, the latency is theirs to fix; adding one per tick would overshoot).
        if c.ttft_slo_s is not None and obs.ttft_s is not None and obs.ttft_s > c.ttft_slo_s and current > 0:
            if raw <= current and (obs.known_replicas is None or obs.known_replicas >= current):
                raw, reason = current + 1, "ttft_slo"
            detail += f"; ttft {obs.ttft_s:.2f}s > slo {c.ttft_slo_s:g}s"
        return raw, reason, detail

    def _remember(self, now: float, raw: int) -> None:
        c = self.cfg
        self._history.append((now, raw))
        horizon = now - max(c.scale_up_window_s, c.scale_down_window_s)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()

    def _scale_up(self, now: float, current: int, raw: int, reason: str, detail: str, known: int | None, corrected: bool) -> Decision:
        c = self.cfg
        if known is not None and known < current and now - self._last_change < c.starting_grace_s:
            return self._hold(current, "replicas_starting", f"{detail}; {current - known} replica(s) still starting", raw)
        if corrected and now - self._ready_rose_at < c.growth_window_s:
            left = c.growth_window_s - (now - self._ready_rose_at)
            return self._hold(current, "replicas_settling", f"{detail}; ready replicas just rose, rates settle for {left:.0f}s", raw)
        window = [r for t, r in self._history if t >= now - c.scale_up_window_s]
        stable = min(window) if window else raw
        if current == 0 and reason == "demand_at_zero":
            stable = max(stable, 1)  # the first replica never waits for a window: requests are queued for it
        if stable <= current:
            return self._hold(current, "scale_up_window", f"{detail}; not yet sustained for {c.scale_up_window_s:g}s", raw)
        desired = min(stable, current + c.max_scale_up_step, c.max_replicas)
        if desired <= current:
            return self._hold(current, "max_replicas", f"{detail}; at max_replicas {c.max_replicas}", raw)
        return Decision(current, desired, "scale_up", reason, detail, raw)

    def _scale_down(self, now: float, current: int, raw: int, reason: str, detail: str) -> Decision:
        c = self.cfg
        assert self._first_data is not None  # set by _note_data before any recommendation
        if now - self._first_data < c.scale_down_window_s:
            return self._hold(current, "scale_down_window", f"{detail}; less than {c.scale_down_window_s:g}s of data", raw)
        stable = max(r for t, r in self._history if t >= now - c.scale_down_window_s)
        if stable >= current:
            return self._hold(current, "scale_down_window", f"{detail}; not yet sustained for {c.scale_down_window_s:g}s", raw)
        if now - self._last_change < c.cooldown_s:
            left = c.cooldown_s - (now - self._last_change)
            return self._hold(current, "cooldown", f"{detail}; cooldown {left:.0f}s left", raw)
        desired = max(stable, c.min_replicas)
        if desired >= current:
            return self._hold(current, "min_replicas", f"{detail}; at min_replicas {c.min_replicas}", raw)
        return Decision(current, desired, "scale_down", reason, detail, raw)
