"""Actuators: where a scaling decision is carried out (Ray controller, Kubernetes API)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.autoscaler.actuators.base import Actuator, ActuatorError

if TYPE_CHECKING:
    from cluster.config import ClusterConfig


def make_actuator(cfg: ClusterConfig, model: str) -> Actuator:
    """The actuator ``autoscaler.actuator.kind`` names; Ray is joined / Kubernetes configured here."""
    kind = cfg.autoscaler.actuator.kind
    if kind == "ray":
        from cluster.autoscaler.actuators.ray import RayActuator
        from cluster.ray_connect import NoCluster, find_controller

        try:
            controller = find_controller(cfg)
        except NoCluster as exc:
            raise ActuatorError(str(exc)) from None
        return RayActuator(controller, model)
    from cluster.autoscaler.actuators.kubernetes import KubernetesActuator, KubernetesTarget  # "helm" helper's module

    target = cfg.autoscaler.actuator.kubernetes
    assert isinstance(target, KubernetesTarget)  # the config validator requires it for kind kubernetes
    return KubernetesActuator(target)


__all__ = ["Actuator", "ActuatorError", "make_actuator"]
