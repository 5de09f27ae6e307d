"""One chat message, as the router validates it and an engine renders it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ChatMessage:
    role: str
    content: str
