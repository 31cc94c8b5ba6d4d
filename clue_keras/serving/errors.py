"""The error a serving call raises, and which gRPC codes are worth retrying."""

from __future__ import annotations

from typing import Optional, Sequence

import grpc

#: Codes a client retries with backoff (the server may come back in time).
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ServingError(Exception):
    """A failed call: the gRPC ``code``, the server's ``details``, and the rows
    (indices into the batch given to ``predict``) it concerns, if known."""

    def __init__(self, code: grpc.StatusCode, details: str, rows: Optional[Sequence[int]] = None):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.rows = list(rows) if rows is not None else None
