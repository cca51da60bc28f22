"""Key/value storage for the Auth service; see docs/backend.md."""

from .interface import (
    DELETE,
    MAX_PUT_ALL,
    PUT,
    BackendClosedError,
    BackendInUseError,
    BackendUnavailableError,
    Event,
    IBackend,
    Item,
    IWatcher,
)
from .memory import MemoryBackend
from .sqlite import SQLiteBackend

__all__ = [
    "DELETE",
    "MAX_PUT_ALL",
    "PUT",
    "BackendClosedError",
    "BackendInUseError",
    "BackendUnavailableError",
    "Event",
    "IBackend",
    "IWatcher",
    "Item",
    "MemoryBackend",
    "SQLiteBackend",
]
