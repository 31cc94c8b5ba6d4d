"""The error a serving call raises, and which gRPC codes are worth retrying.

``RESOURCE_EXHAUSTED`` means one of two things, told apart by the status
details (:func:`is_server_busy`):

* the server is busy: its cap on concurrent RPCs is reached. gRPC itself
  answers, before any servicer runs: ``Concurrent RPC limit exceeded!`` from
  grpcio's server (``clue serve --max-concurrent-rpcs``), ``Server Threadpool
  Exhausted`` from gRPC C++'s (``tensorflow_model_server``). The same request
  may succeed a moment later: retried with backoff;
* the message is too big: ``Received message larger than max (N vs. M)`` (the
  server's receive limit or the client's for the response), ``Sent message
  larger than max`` (the client's send limit), or a model out of memory. The
  same request fails again: a client splits the batch instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

import grpc

#: Codes a client retries with backoff (the server may come back in time).
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

#: Status details of a ``RESOURCE_EXHAUSTED`` that means "busy, try again".
BUSY_DETAILS = ("Concurrent RPC limit exceeded", "Server Threadpool Exhausted")


def is_server_busy(code: grpc.StatusCode, details: Optional[str]) -> bool:
    """True for a ``RESOURCE_EXHAUSTED`` that says the server is at its concurrency
    cap (worth retrying), False for any other status (a too-big message included)."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and any(
        marker in (details or "") for marker in BUSY_DETAILS)


class ServingError(Exception):
    """A failed call: the gRPC ``code``, the server's ``details``, and the rows
    (indices into the batch given to ``predict``) it concerns, if known.
    ``busy`` is True when the server was at its concurrency cap on every attempt."""

    def __init__(self, code: grpc.StatusCode, details: str, rows: Optional[Sequence[int]] = None,
                 busy: bool = False):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.rows = list(rows) if rows is not None else None
        self.busy = busy
