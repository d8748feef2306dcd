"""The upload service's settings, read by each of its parts at each use.

They are attributes of `Uploads` (which is an `UploadOptions`), so that a running server may
be tuned (``server.uploads.busy_wait = 0.1``) and every part sees the change.
"""

from __future__ import annotations

from .records import MiB

__all__ = ["UploadOptions"]


class UploadOptions:
    """The settings of the upload endpoints, and the count of bytes they received.

    See `Uploads` for what each attribute means.
    """

    def __init__(self, *, max_size: int, resume_ttl: float, path: str) -> None:
        self.max_size = max_size
        self.resume_ttl = resume_ttl
        self.path = path
        self.busy_wait = 2.0
        self.idle_timeout = 60.0
        self.frame_limit = 4 * MiB
        self.batch_size = MiB
        self.bytes_received = 0
