"""Actuators: where a scaling decision is carried out (Ray controller, Kubernetes API)."""

from cluster.autoscaler.actuators.base import Actuator, ActuatorError

__all__ = ["Actuator", "ActuatorError"]
