"""The typed API: commands as pydantic models, sent through any adapter."""

from .command import Command, EventModel

__all__ = ["Command", "EventModel"]
