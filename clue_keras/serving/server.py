"""A small local model server that speaks TensorFlow Serving's gRPC API.

``tensorflow_model_server`` cannot be installed on the development machines,
so this module serves the same model directory over the same gRPC services,
built from ``tensorflow-serving-api``'s own protos:

* ``tensorflow.serving.PredictionService``: ``Predict``, ``GetModelMetadata``
  (``Classify``, ``Regress``, ``MultiInference`` answer ``UNIMPLEMENTED``);
* ``tensorflow.serving.ModelService``: ``GetModelStatus``
  (``HandleReloadConfigRequest`` answers ``UNIMPLEMENTED``).

Model directory layout (TF Serving's, and what the TFX Pusher writes)::

    <model_base_path>/<integer version>/saved_model.pb (+ variables/, assets/)

A version directory counts only once its ``saved_model.pb`` exists (the Pusher
writes it last) and only if it resolves to a place inside the base path;
non-integer names (``tmp-123``, ``.staging``, ``junk``) are ignored, and
nothing else is ever loaded. A poller thread (every ``poll_seconds``) loads the
highest version with ``tf.saved_model.load`` and swaps it in atomically: the
previous version keeps answering until the new one has loaded, and a version
that fails to load is logged, reported by ``GetModelStatus`` (state ``END``
with the error) and skipped; the next lower unloaded version newer than the
served one is tried instead, and the failed one is retried only once its
``saved_model.pb`` changes. Removing the served version's directory makes the
server fall back to the highest remaining version, as TF Serving's ``latest``
policy does.

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

import dataclasses
import logging
import os
import re
import signal
import threading
import time
import warnings
from concurrent import futures
from typing import Dict, List, Optional, Tuple

import grpc

from clue_keras.tokenizer import register_text_ops

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # gRPC's own default receive limit.
DEFAULT_MAX_BATCH = 1024
DEFAULT_POLL_SECONDS = 1.0
DEFAULT_THREADS = 8
SAVED_MODEL_FILE = "saved_model.pb"

_VERSION_DIR = re.compile(r"[0-9]{1,18}")
_STATUS_BY_INT = {code.value[0]: code for code in grpc.StatusCode}


class _Abort(Exception):
    """A request error: ends the RPC with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------
# Model versions on disk and in memory.


def list_versions(model_base_path: str) -> Dict[int, str]:
    """The servable versions under ``model_base_path``: ``{version: dir}``.

    A version is a directory directly under the base path whose name is a
    non-negative integer, which contains ``saved_model.pb`` and which resolves
    (after symlinks) to a place inside the base path. Everything else is
    ignored.
    """
    real_base = os.path.realpath(model_base_path)
    versions: Dict[int, str] = {}
    try:
        entries = list(os.scandir(model_base_path))
    except FileNotFoundError:
        return versions
    for entry in entries:
        if not _VERSION_DIR.fullmatch(entry.name):
            continue
        path = os.path.join(model_base_path, entry.name)
        real = os.path.realpath(path)
        if real == real_base or os.path.commonpath([real, real_base]) != real_base:
            continue  # A symlink out of the base path: never loaded.
        if not os.path.isdir(real) or not os.path.isfile(os.path.join(real, SAVED_MODEL_FILE)):
            continue  # Still being written (or not a SavedModel at all).
        version = int(entry.name)
        if version in versions:  # "7" and "007": keep the canonical name.
            if entry.name != str(version):
                continue
        versions[version] = path
    return versions


@dataclasses.dataclass
class LoadedVersion:
    """One loaded SavedModel version.

    Attributes:
      version: the integer directory name.
      path: the version directory.
      module: what ``tf.saved_model.load`` returned (kept alive here).
      signatures: ``{signature name: ConcreteFunction}``.
      input_specs: ``{signature name: {input name: tf.TensorSpec}}``.
      signature_defs: the ``serve`` meta graph's ``SignatureDef`` map, as TF
        Serving returns it from ``GetModelMetadata``.
    """

    version: int
    path: str
    module: object
    signatures: Dict[str, object]
    input_specs: Dict[str, Dict[str, object]]
    signature_defs: object  # tensorflow_serving.apis.get_model_metadata_pb2.SignatureDefMap


def load_version(version: int, path: str) -> LoadedVersion:
    """Loads ``path`` (a SavedModel directory) as ``version``."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, SAVED_MODEL_FILE), "rb") as f, warnings.catch_warnings():
        # The pure-Python protobuf only warns about some malformed input.
        warnings.simplefilter("error", RuntimeWarning)
        saved_model.ParseFromString(f.read())
    meta_graphs = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
    if not meta_graphs:
        raise ValueError(f"{path}/{SAVED_MODEL_FILE} has no meta graph tagged 'serve'")
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in meta_graphs[0].signature_def.items():
        signature_defs.signature_def[key].CopyFrom(sig)

    register_text_ops()  # CLUE graphs tokenise with TF Text's RegexSplitWithOffsets
    module = tf.saved_model.load(path, tags=["serve"])
    signatures = dict(module.signatures)
    input_specs = {}
    for name, fn in signatures.items():
        _, kwargs = fn.structured_input_signature
        input_specs[name] = dict(kwargs)
    return LoadedVersion(version, path, module, signatures, input_specs, signature_defs)


class ModelManager:
    """Watches ``model_base_path`` and keeps its highest version loaded.

    ``current()`` is safe to call from any thread; the swap to a new version
    is one reference assignment under a lock, so a request sees either the old
    or the new version, never a mix.
    """

    def __init__(self, model_name: str, model_base_path: str, poll_seconds: float = DEFAULT_POLL_SECONDS):
        if not model_name:
            raise ValueError("model_name must not be empty")
        if not os.path.isdir(model_base_path):
            raise FileNotFoundError(f"model base path {model_base_path!r} is not a directory")
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
        self.model_name = model_name
        self.model_base_path = model_base_path
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._current: Optional[LoadedVersion] = None
        # version -> (ModelVersionStatus.State name, grpc.StatusCode, message)
        self._status: Dict[int, Tuple[str, grpc.StatusCode, str]] = {}
        self._failed: Dict[int, float] = {}  # version -> saved_model.pb mtime
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- state seen by the servicers --
    def current(self) -> Optional[LoadedVersion]:
        with self._lock:
            return self._current

    def statuses(self) -> Dict[int, Tuple[str, grpc.StatusCode, str]]:
        with self._lock:
            return dict(self._status)

    def _set_status(self, version: int, state: str, code=grpc.StatusCode.OK, message: str = "") -> None:
        with self._lock:
            self._status[version] = (state, code, message)

    # -- polling --
    def poll_once(self) -> Optional[int]:
        """Loads the newest loadable version if it is not the one served.

        Returns the version served afterwards (None while there is none).
        """
        versions = list_versions(self.model_base_path)
        current = self.current()
        for version in sorted(versions, reverse=True):
            if current is not None and version == current.version:
                break  # Already serving the newest loadable version.
            path = versions[version]
            try:
                mtime = os.stat(os.path.join(path, SAVED_MODEL_FILE)).st_mtime
            except OSError:
                continue
            if self._failed.get(version) == mtime:
                continue  # Failed before and unchanged since: skip it.
            if self._load(version, path, mtime):
                break
        if not versions and current is None:
            log.debug("no servable versions of %r under %s yet", self.model_name, self.model_base_path)
        current = self.current()
        return None if current is None else current.version

    def _load(self, version: int, path: str, mtime: float) -> bool:
        self._set_status(version, "LOADING")
        log.info("loading model %r version %d from %s", self.model_name, version, path)
        start = time.monotonic()
        try:
            loaded = load_version(version, path)
        except Exception as e:  # A broken version must never take the server down.
            self._failed[version] = mtime
            message = f"loading {path} failed: {type(e).__name__}: {e}"[:2000]
            self._set_status(version, "END", grpc.StatusCode.UNKNOWN, message)
            log.error("model %r version %d: %s; it is skipped", self.model_name, version, message)
            return False
        self._failed.pop(version, None)
        with self._lock:
            previous = self._current
            self._current = loaded
            self._status[version] = ("AVAILABLE", grpc.StatusCode.OK, "")
            if previous is not None and previous.version != version:
                self._status[previous.version] = ("END", grpc.StatusCode.OK, "")
        log.info(
            "serving model %r version %d (loaded in %.1f s%s)",
            self.model_name, version, time.monotonic() - start,
            "" if previous is None else f"; replaced version {previous.version}",
        )
        return True

    def start(self) -> None:
        """Loads the newest version now, then keeps polling in a thread."""
        self.poll_once()
        if self.current() is None:
            log.warning(
                "no loadable version of model %r under %s yet; polling every %.3g s",
                self.model_name, self.model_base_path, self.poll_seconds,
            )
        self._thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.model_name}", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # e.g. the base path vanished for a moment.
                log.exception("polling %s failed; will retry", self.model_base_path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


# --------------------------------------------------------------------------
# gRPC servicers.


def _format_shape(shape) -> str:
    dims = getattr(shape, "as_list", lambda: list(shape))()
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def _resolve(manager: ModelManager, model_spec) -> LoadedVersion:
    """The loaded version a request's ``ModelSpec`` asks for, or ``_Abort``."""
    name = model_spec.name
    if model_spec.WhichOneof("version_choice") == "version_label":
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Unrecognized servable version label: {model_spec.version_label} "
            "(this server has no version labels)",
        )
    wants_version = model_spec.HasField("version")
    request_str = (
        f"Specific({name}, {model_spec.version.value})" if wants_version else f"Latest({name})"
    )
    if name != manager.model_name:
        raise _Abort(
            grpc.StatusCode.NOT_FOUND,
            f"Servable not found for request: {request_str}; this server serves model "
            f"{manager.model_name!r}",
        )
    loaded = manager.current()
    if loaded is None:
        raise _Abort(
            grpc.StatusCode.NOT_FOUND,
            f"Servable not found for request: {request_str}; no version of {name!r} "
            f"under {manager.model_base_path} has loaded yet",
        )
    if wants_version and model_spec.version.value != loaded.version:
        raise _Abort(
            grpc.StatusCode.NOT_FOUND,
            f"Servable not found for request: {request_str}; serving version {loaded.version}",
        )
    return loaded


def _fill_model_spec(spec, name: str, version: int, signature_name: Optional[str] = None) -> None:
    spec.name = name
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = signature_name


def _rpc(method):
    """Turns ``_Abort`` and TensorFlow errors raised by ``method`` into statuses."""

    def wrapper(self, request, context):
        import tensorflow as tf

        try:
            return method(self, request, context)
        except _Abort as e:
            context.abort(e.code, e.message)
        except tf.errors.OpError as e:
            code = _STATUS_BY_INT.get(e.error_code, grpc.StatusCode.UNKNOWN)
            context.abort(code, e.message)
        except Exception as e:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _make_servicers(manager: ModelManager, max_batch: int):
    """Builds the two servicer objects (imports the generated gRPC modules)."""
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        @_rpc
        def Predict(self, request, context):
            """TF Serving's Predict on the requested (or latest) version."""
            import tensorflow as tf

            loaded = _resolve(manager, request.model_spec)
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature_name not in loaded.signatures:
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'Serving signature key "{signature_name}" not found. Signatures of '
                    f"version {loaded.version}: {sorted(loaded.signatures)}",
                )
            fn = loaded.signatures[signature_name]
            specs = loaded.input_specs[signature_name]

            sent, expected = set(request.inputs), set(specs)
            if sent != expected:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input size does not match signature {signature_name!r}: "
                    f"{len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) != "
                    f"len({{{','.join(sorted(expected))}}}). Sent extra: "
                    f"{{{','.join(sorted(sent - expected))}}}. Missing but required: "
                    f"{{{','.join(sorted(expected - sent))}}}.",
                )

            outputs_wanted: List[str] = []
            output_names = sorted(fn.structured_outputs)
            for alias in request.output_filter:
                if alias not in fn.structured_outputs:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"output tensor alias not found in signature: {alias} Outputs "
                        f"expected to be in the set {{{','.join(output_names)}}}.",
                    )
                if alias in outputs_wanted:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
                outputs_wanted.append(alias)
            outputs_wanted = outputs_wanted or output_names

            feeds = {}
            for name in sorted(specs):
                spec = specs[name]
                proto = request.inputs[name]
                if proto.dtype != spec.dtype.as_datatype_enum:
                    try:
                        got = tf.dtypes.as_dtype(proto.dtype).name
                    except TypeError:
                        got = f"DataType enum {proto.dtype}"
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input {name!r} of signature {signature_name!r}: expected dtype "
                        f"{spec.dtype.name}, got {got}",
                    )
                try:
                    value = tf.make_ndarray(proto)
                except Exception as e:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input {name!r}: cannot decode its TensorProto: {e}",
                    ) from e
                if not spec.shape.is_compatible_with(value.shape):
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input {name!r} of signature {signature_name!r}: expected shape "
                        f"{_format_shape(spec.shape)}, got {_format_shape(value.shape)}",
                    )
                if spec.shape.rank and spec.shape[0] is None:  # A batch dimension.
                    if value.shape[0] == 0:
                        raise _Abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"input {name!r} has an empty batch (dimension 0 is 0)",
                        )
                    if max_batch and value.shape[0] > max_batch:
                        raise _Abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"input {name!r} has batch size {value.shape[0]}, over this "
                            f"server's limit of {max_batch} (--max-batch); split the request",
                        )
                feeds[name] = tf.constant(value, dtype=spec.dtype)

            results = fn(**feeds)
            response = predict_pb2.PredictResponse()
            _fill_model_spec(response.model_spec, manager.model_name, loaded.version, signature_name)
            for alias in outputs_wanted:
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(results[alias].numpy()))
            return response

        @_rpc
        def GetModelMetadata(self, request, context):
            """The ``signature_def`` metadata (a ``SignatureDefMap``) of a version."""
            fields = list(request.metadata_field)
            if not fields:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in fields:
                if field != "signature_def":
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Metadata field {field} is not supported",
                    )
            loaded = _resolve(manager, request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _fill_model_spec(response.model_spec, manager.model_name, loaded.version)
            response.metadata["signature_def"].Pack(loaded.signature_defs)
            return response

    class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
        @_rpc
        def GetModelStatus(self, request, context):
            """Every version this server has tried: AVAILABLE, LOADING or END."""
            spec = request.model_spec
            if spec.name != manager.model_name:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find any versions of model {spec.name}; this server serves "
                    f"model {manager.model_name!r}",
                )
            statuses = manager.statuses()
            if spec.HasField("version"):
                if spec.version.value not in statuses:
                    raise _Abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"Could not find version {spec.version.value} of model {spec.name}",
                    )
                statuses = {spec.version.value: statuses[spec.version.value]}
            if not statuses:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find any versions of model {spec.name} under "
                    f"{manager.model_base_path}",
                )
            response = get_model_status_pb2.GetModelStatusResponse()
            for version in sorted(statuses, reverse=True):
                state, code, message = statuses[version]
                entry = response.model_version_status.add()
                entry.version = version
                entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
                entry.status.error_code = code.value[0]
                entry.status.error_message = message
            return response

    return PredictionServicer(), ModelServicer()


# --------------------------------------------------------------------------
# Server lifecycle.


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
    prediction, model_status = _make_servicers(manager, max_batch)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_status, server)
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
