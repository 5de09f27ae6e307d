"""How a replica ends an OpenAI call with a status rather than chunks (both of its transports understand it)."""

from __future__ import annotations

import grpc


class CallAborted(Exception):
    """End the call with ``code`` (e.g. UNAVAILABLE while draining): the gRPC call aborts with it, the relay
    stream (cluster/replica/relay.py) sends it as its ``ERROR`` frame; the router reads both alike."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
