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
by :mod:`clue_keras.serving.model_manager`, one manager per model: a server
serves one model or several (``models=[(name, base_path), ...]``, e.g. the
encoder and the user-id lookup model, or the models of a TF Serving
``models.config``: `clue_keras.serving.models_config.read_models_config`); the gRPC servicers are in
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
request over ``max_request_bytes``      ``RESOURCE_EXHAUSTED`` (from gRPC:
                                        "Received message larger than max")
input declaring more elements than      ``INVALID_ARGUMENT`` (this server's
``max_request_bytes``                   own limit)
over ``max_concurrent_rpcs`` at once    ``RESOURCE_EXHAUSTED`` (from gRPC:
                                        "Concurrent RPC limit exceeded!";
                                        clients retry it, `errors.is_server_busy`)
deadline passed before the model ran    ``DEADLINE_EXCEEDED``
error raised by the model graph         that error's own code
=====================================  ======================================

Limits (each a ``serve`` argument and a ``clue serve`` flag): request bytes,
batch size, elements per input tensor (checked on the declared shape before
decoding), worker threads, and concurrent RPCs (more get ``RESOURCE_EXHAUSTED``
from gRPC instead of queueing without bound). A request whose deadline expired
while it waited for a worker gets ``DEADLINE_EXCEEDED`` without running the model.

TLS as TF Serving does it (``--ssl_config_file``): an ``SSLConfig`` text proto
(``server_key``, ``server_cert``: PEM *contents*; ``custom_ca``: PEM of the CA
that signs client certificates; ``client_verify``: require and verify a client
certificate, i.e. mutual TLS). See :func:`load_ssl_config`. The server binds
``127.0.0.1`` in plaintext unless told otherwise. It is for development and
tests: no authentication beyond mutual TLS, no request batching.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from concurrent import futures
from typing import Dict, Optional, Sequence, Tuple

import grpc

from clue_keras.serving.model_manager import DEFAULT_POLL_SECONDS, DEFAULT_STALLED_SECONDS, ModelManager

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # gRPC's own default receive limit.
DEFAULT_MAX_BATCH = 1024
DEFAULT_THREADS = 8
DEFAULT_MAX_CONCURRENT_RPCS = 256  # running + queued; more get RESOURCE_EXHAUSTED

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


# -- TLS (TF Serving's SSLConfig) ---------------------------------------------


@functools.lru_cache(maxsize=None)
def ssl_config_class():
    """TF Serving's ``tensorflow.serving.SSLConfig`` message class.

    From ``tensorflow_serving.config.ssl_config_pb2`` when installed (the
    ``tensorflow-serving-api`` wheel does not ship it), else built from the
    same four fields in a private descriptor pool.
    """
    try:
        from tensorflow_serving.config import ssl_config_pb2
        return ssl_config_pb2.SSLConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/ssl_config.proto", package="tensorflow.serving", syntax="proto3")
    m = f.message_type.add(name="SSLConfig")
    T = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(
            [("server_key", T.TYPE_STRING), ("server_cert", T.TYPE_STRING),
             ("custom_ca", T.TYPE_STRING), ("client_verify", T.TYPE_BOOL)], start=1):
        m.field.add(name=name, number=number, type=kind, label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def load_ssl_config(path: str):
    """Parses a TF Serving ``--ssl_config_file`` (``SSLConfig`` text proto); ValueError if bad."""
    from google.protobuf import text_format

    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return text_format.Parse(text, ssl_config_class()())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not an SSLConfig text proto: {e}") from None


def ssl_config_from_files(cert: str, key: str, client_ca: Optional[str] = None):
    """An ``SSLConfig`` from PEM files; ``client_ca`` turns on ``client_verify`` (mutual TLS)."""
    def read(path):
        with open(path, encoding="utf-8") as f:
            return f.read()

    config = ssl_config_class()(server_cert=read(cert), server_key=read(key))
    if client_ca:
        config.custom_ca, config.client_verify = read(client_ca), True
    return config


def server_credentials(ssl_config) -> grpc.ServerCredentials:
    """gRPC server credentials from an ``SSLConfig``, as TF Serving builds them:
    ``custom_ca`` is used only with ``client_verify`` (then a client must present a
    certificate it signs)."""
    key, cert = ssl_config.server_key.encode(), ssl_config.server_cert.encode()
    if b"-----BEGIN" not in key or b"-----BEGIN" not in cert:
        raise ValueError("SSLConfig needs server_key and server_cert as PEM contents (not file names)")
    if ssl_config.client_verify and b"-----BEGIN" not in ssl_config.custom_ca.encode():
        raise ValueError("SSLConfig client_verify needs custom_ca (PEM of the client CA)")
    if ssl_config.custom_ca and not ssl_config.client_verify:
        log.info("SSLConfig custom_ca is unused without client_verify (as in TF Serving)")
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ssl_config.custom_ca.encode() if ssl_config.client_verify else None,
        require_client_auth=bool(ssl_config.client_verify),
    )


class ServingServer:
    """A running server (see ``serve``). ``port`` is the bound port."""

    def __init__(self, server: grpc.Server, managers: Dict[str, ModelManager], host: str,
                 port: int):
        self._server = server
        self.managers = managers          # {model name: manager}
        self.manager = next(iter(managers.values()))  # the first model's
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` for a client (IPv6 hosts in brackets)."""
        return f"{_bracket(self.host)}:{self.port}"

    def stop(self, grace: Optional[float] = 5.0) -> None:
        """Stops the pollers, then the server (in-flight RPCs get ``grace`` s)."""
        for manager in self.managers.values():
            manager.stop()
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
    model_base_path: Optional[str],
    model_name: Optional[str],
    port: int = 8500,
    host: str = "127.0.0.1",
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    threads: int = DEFAULT_THREADS,
    ssl_config=None,
    max_concurrent_rpcs: Optional[int] = DEFAULT_MAX_CONCURRENT_RPCS,
    stalled_seconds: float = DEFAULT_STALLED_SECONDS,
    models: Sequence[Tuple[str, str]] = (),
) -> ServingServer:
    """Starts serving ``model_base_path`` as ``model_name`` (and ``models``); returns at once.

    The newest loadable version of each model is loaded before this returns (if
    there is one), so a request right after ``serve`` sees it.

    Args:
      model_base_path: directory of ``<integer version>/saved_model.pb``; None
        when ``models`` names every model.
      model_name: the name clients put in ``ModelSpec.name``.
      models: more ``(model name, base path)`` pairs served by the same server
        (each with its own versions), as in a TF Serving ``models.config``.
      port: TCP port; 0 picks a free one (read it from ``.port``).
      host: interface to bind; loopback unless you mean to expose it.
      poll_seconds: how often to look for a new version.
      max_request_bytes: largest request accepted (``grpc.max_receive_message_length``);
        bigger requests fail with ``RESOURCE_EXHAUSTED``.
      max_batch: largest dimension 0 accepted for each input whose signature
        leaves dimension 0 unknown; 0 means no limit.
      threads: size of the gRPC worker thread pool (concurrent requests).
      ssl_config: an ``SSLConfig`` (:func:`load_ssl_config`,
        :func:`ssl_config_from_files`) to serve TLS; None: plaintext.
      max_concurrent_rpcs: RPCs running or queued at once; more are refused
        with ``RESOURCE_EXHAUSTED`` (None: no limit).
      stalled_seconds: an incomplete version directory unchanged this long is
        reported once and skipped (``model_manager``'s completeness rule).

    Raises:
      FileNotFoundError: ``model_base_path`` is not a directory.
      ValueError: a bad limit or ``ssl_config``; no model, or a name twice.
      OSError: the address cannot be bound.
    """
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from clue_keras.serving.servicers import ModelServicer, PredictionServicer

    if max_request_bytes <= 0:
        raise ValueError(f"max_request_bytes must be > 0, got {max_request_bytes}")
    if max_batch < 0 or threads < 1 or (max_concurrent_rpcs is not None and max_concurrent_rpcs < threads):
        raise ValueError(f"need max_batch >= 0, threads >= 1 and max_concurrent_rpcs >= threads, "
                         f"got {max_batch}, {threads}, {max_concurrent_rpcs}")
    pairs = ([(model_name, model_base_path)] if model_base_path is not None else []) + list(models)
    names = [name for name, _ in pairs]
    if not pairs or not all(names) or len(set(names)) != len(names):
        raise ValueError(f"serve needs at least one model and distinct, non-empty names, got "
                         f"{names}")
    credentials = server_credentials(ssl_config) if ssl_config is not None else None
    managers = {name: ModelManager(name, base, poll_seconds, stalled_seconds)
                for name, base in pairs}
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clue-serve"),
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(managers, max_batch, max_elements=max_request_bytes), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(managers), server)
    address = f"{_bracket(host)}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError as e:  # grpc raises instead of returning 0 on some failures
        bound, error = 0, str(e)
    else:
        error = ""
    if not bound:
        hint = ("; or the SSLConfig's server_key/server_cert are not a valid PEM key and "
                "certificate of one pair" if credentials is not None else "")
        raise OSError(f"cannot bind {address} (in use or not an address of this machine{hint})"
                      + (f": {error}" if error else ""))
    if credentials is None and host not in _LOOPBACK:
        log.warning("serving plaintext on %s, reachable from other machines; use TLS "
                    "(--ssl-config-file) or bind 127.0.0.1", host)
    for manager in managers.values():
        manager.start()
    server.start()
    log.info("serving %s on %s:%d (%s)",
             ", ".join(f"model {n!r} from {b}" for n, b in pairs), host, bound,
             "plaintext" if credentials is None
             else "mutual TLS" if ssl_config.client_verify else "TLS")
    return ServingServer(server, managers, host, bound)


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
