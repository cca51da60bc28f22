"""An HTTP response's body read whole, but never more than a limit.

Every client of ours that reads an answer whole (Auth's, the proxy's web
API, etcd's gateway, the CA fetch of a join, the agent's GETs to the API
server) reads it here: the bytes are counted as they arrive, and past the
limit the read stops and the connection is abandoned (treq stops the
response's producer when the collector raises), so a server that answers
without end costs at most ``limit`` bytes of memory.
"""
from __future__ import annotations

import treq


class BodyTooLarge(Exception):
    """The answer went past the limit; the caller says whose answer it was."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


async def read_bounded(response, limit: int) -> bytes:
    """The whole body of ``response`` (a treq or twisted.web response), or
    ``BodyTooLarge`` as soon as more than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)
