"""A small local model server that speaks TensorFlow Serving's gRPC API.

``tensorflow_model_server`` cannot be installed on the development machines,
so this module serves the same model directory over the same gRPC services,
built from ``tensorflow-serving-api``'s own protos:

* ``tensorflow.serving.PredictionService``: ``Predict``, ``GetModelMetadata``
  (``Classify``, ``Regress``, ``MultiInference`` answer ``UNIMPLEMENTED``);
* ``tensorflow.serving.ModelService``: ``GetModelStatus``
  (``HandleReloadConfigRequest`` answers ``UNIMPLEMENTED``).

Model versions (``<model_base_path>/<integer version>/saved_model.pb``, TF
Serving's layout and what the TFX Pusher writes) are found, loaded and swapped
by :mod:`clue_keras.serving.model_manager`; the gRPC servicers are in
:mod:`clue_keras.serving.servicers`. This module starts and stops the server.

Status codes follow TF Serving (``servables/tensorflow/predict_util.cc``):

=====================================  ======================================
request problem                         status
=====================================  ======================================
unknown model name or version           ``NOT_FOUND`` ("Servable not found ...")
no version loaded yet                   ``NOT_FOUND``
``version_label`` (labels unsupported)  ``INVALID_ARGUMENT``
unknown ``signature_name``              ``FAILED_PRECONDITION``
missing / extra inputs                  ``INVALID_ARGUMENT``
unknown / duplicate ``output_filter``   ``INVALID_ARGUMENT``
input dtype or shape mismatch           ``INVALID_ARGUMENT`` (names input,
                                        expected and got)
empty batch, batch over ``max_batch``   ``INVALID_ARGUMENT`` (this server's
                                        own limits; TF Serving has none)
request over ``max_request_bytes``      ``RESOURCE_EXHAUSTED`` (from gRPC)
error raised by the model graph         that error's own code
=====================================  ======================================

The server binds ``127.0.0.1`` unless told otherwise. It is for development
and tests: there is no TLS, no authentication and no request batching.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from typing import Optional

import grpc

from clue_keras.serving.model_manager import DEFAULT_POLL_SECONDS, ModelManager

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # gRPC's own default receive limit.
DEFAULT_MAX_BATCH = 1024
DEFAULT_THREADS = 8


class ServingServer:
    """A running server (see ``serve``). ``port`` is the bound port."""

    def __init__(self, server: grpc.Server, manager: ModelManager, host: str, port: int):
        self._server = server
        self.manager = manager
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` for a client (IPv6 hosts in brackets)."""
        return f"{_bracket(self.host)}:{self.port}"

    def stop(self, grace: Optional[float] = 5.0) -> None:
        """Stops the poller, then the server (in-flight RPCs get ``grace`` s)."""
        self.manager.stop()
        self._server.stop(grace).wait()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the server has stopped; True if it did."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> "ServingServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(
    model_base_path: str,
    model_name: str,
    port: int = 8500,
    host: str = "127.0.0.1",
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    threads: int = DEFAULT_THREADS,
) -> ServingServer:
    """Starts serving ``model_base_path`` as ``model_name``; returns at once.

    The newest loadable version is loaded before this returns (if there is
    one), so a request right after ``serve`` sees it.

    Args:
      model_base_path: directory of ``<integer version>/saved_model.pb``.
      model_name: the name clients put in ``ModelSpec.name``.
      port: TCP port; 0 picks a free one (read it from ``.port``).
      host: interface to bind; loopback unless you mean to expose it.
      poll_seconds: how often to look for a new version.
      max_request_bytes: largest request accepted (``grpc.max_receive_message_length``);
        bigger requests fail with ``RESOURCE_EXHAUSTED``.
      max_batch: largest dimension 0 accepted for each input whose signature
        leaves dimension 0 unknown; 0 means no limit.
      threads: size of the gRPC worker thread pool (concurrent requests).

    Raises:
      FileNotFoundError: ``model_base_path`` is not a directory.
      OSError: the address cannot be bound.
    """
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from clue_keras.serving.servicers import ModelServicer, PredictionServicer

    if max_request_bytes <= 0:
        raise ValueError(f"max_request_bytes must be > 0, got {max_request_bytes}")
    if max_batch < 0 or threads < 1:
        raise ValueError(f"need max_batch >= 0 and threads >= 1, got {max_batch}, {threads}")
    manager = ModelManager(model_name, model_base_path, poll_seconds)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clue-serve"),
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, max_batch), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    bound = server.add_insecure_port(f"{_bracket(host)}:{port}")
    if not bound:
        raise OSError(f"cannot bind {_bracket(host)}:{port}")
    manager.start()
    server.start()
    log.info("serving model %r from %s on %s:%d", model_name, model_base_path, host, bound)
    return ServingServer(server, manager, host, bound)


def run_until_signalled(handle: ServingServer, grace: float = 5.0) -> None:
    """Blocks until SIGTERM or SIGINT, then stops ``handle`` gracefully.

    Must be called from the main thread (Python delivers signals there).
    """
    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("received %s; stopping (grace %.3g s)", signal.Signals(signum).name, grace)
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        handle.stop(grace)
