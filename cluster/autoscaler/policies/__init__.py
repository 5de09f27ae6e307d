"""Scaling policies: an Observation history -> a replica count, behind ScalingPolicy."""

from cluster.autoscaler.policies.base import ScalingPolicy
from cluster.autoscaler.policies.target_tracking import TargetTracking

__all__ = ["ScalingPolicy", "TargetTracking"]
