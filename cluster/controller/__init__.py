"""The controller: a named, detached Ray actor that owns the deployment."""

from cluster.controller.controller import CONTROLLER_NAME, ControllerActor, get_or_create_controller

__all__ = ["CONTROLLER_NAME", "ControllerActor", "get_or_create_controller"]
