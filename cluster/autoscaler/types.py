"""What flows through the autoscaler loop: an Observation in, a Decision out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Observation:
    """One model's load as a metrics source saw it.

    ``None`` means "not known" (missing or stale series), never zero: the
    policy treats unknown as a reason to hold, so a replica that stops
    reporting cannot make the fleet look idle.
    """

    #: Unix time of the newest sample the observation is built from.
    at: float
    #: Ready replicas the router knows (None: no router data).
    known_replicas: int | None
    #: Replicas whose own metrics are fresh.
    reporting_replicas: int
    #: waiting + running requests summed over the reporting replicas.
    load: float | None
    #: Mean KV-cache usage (0..1) over the reporting replicas.
    kv_usage: float | None
    #: Generation tokens per second, summed over the reporting replicas.
    token_throughput: float | None
    #: TTFT quantile as clients see it (router histograms); None without traffic.
    ttft_s: float | None
    #: Requests the router holds because no replica is ready (scale-from-zero demand).
    demand: float | None
    #: Requests in the engines' running batches (the in-service part of ``load``).
    running: float | None = None
    #: Requests finished per second (router), over the source's rate window.
    completion_rate: float | None = None


@dataclass(slots=True)
class Decision:
    current: int
    desired: int
    #: scale_up | scale_down | hold
    action: str
    #: Short machine-friendly cause (metrics label), e.g. "target_tracking", "stale_metrics", "ttft_slo".
    reason: str
    #: Human sentence with the numbers that led to it (logged).
    detail: str
    #: The unstabilised recommendation (None when holding on missing data).
    recommendation: int | None = None
