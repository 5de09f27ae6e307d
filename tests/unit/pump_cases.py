"""What tests/unit/test_pump.py and tests/unit/test_pump_first.py share: both pumps' names, the ITL bounds and
buffer mark they are built with, a fake client transport and a replica chunk's bytes."""

from __future__ import annotations

from cluster.proto import replica_pb2

IMPLS = ["native", "python"]
BOUNDS = (0.001, 0.0025, 0.005, 0.01, float("inf"))
HIGH = 1000


class Transport:
    """The client's transport as the pump sees it: what was written, and a buffer that fills when told to."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


def chunk(**fields) -> bytes:
    """One OpenAIChunk's bytes, as the replica sends them."""
    return replica_pb2.OpenAIChunk(**fields).SerializeToString()
