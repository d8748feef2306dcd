"""The typed API: commands as pydantic models, sent through any adapter."""

from .client import Api
from .command import Command, EventModel

__all__ = ["Api", "Command", "EventModel"]
