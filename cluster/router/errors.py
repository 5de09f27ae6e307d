"""The router's own error: a gRPC status code and a message (the HTTP front end maps it to an HTTP status)."""

from __future__ import annotations

import grpc


class RouterError(Exception):
    """An error with a gRPC status code; the HTTP front end maps it to a status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
