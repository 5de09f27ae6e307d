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
        import ray

        from cluster.autoscaler.actuators.ray import RayActuator
        from cluster.controller import CONTROLLER_NAME
        from cluster.ray_connect import init_ray

        init_ray(cfg.ray.address, cfg.ray.namespace, cfg.ray.node_ip_address)
        try:
            controller = ray.get_actor(CONTROLLER_NAME)
        except ValueError:
            raise ActuatorError(
                f"no controller actor {CONTROLLER_NAME!r} in Ray namespace {cfg.ray.namespace!r}; is the cluster up?"
            ) from None
        return RayActuator(controller, model)
    from cluster.autoscaler.actuators.kubernetes import KubernetesActuator, KubernetesTarget  # "helm" helper's module

    target = cfg.autoscaler.actuator.kubernetes
    assert isinstance(target, KubernetesTarget)  # the config validator requires it for kind kubernetes
    return KubernetesActuator(target)


__all__ = ["Actuator", "ActuatorError", "make_actuator"]
