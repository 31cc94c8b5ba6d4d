"""A client for TF Serving's gRPC PredictionService, and CLUE user embedding.

``CLUEClient`` talks to a real ``tensorflow_model_server`` or to
``clue_keras.serving.server`` alike:

* every request stays under gRPC's message limit (4 MB by default): the batch
  dimension is split so that each serialized ``PredictRequest`` fits, and a
  request the server still rejects as too big (``RESOURCE_EXHAUSTED``, "message
  larger than max"), or whose response is too big, is halved and sent again;
* every call has a deadline (``timeout_s``), and ``UNAVAILABLE``,
  ``DEADLINE_EXCEEDED`` and a busy server (``RESOURCE_EXHAUSTED`` at its cap on
  concurrent RPCs, told apart from a too-big message by its status details:
  `clue_keras.serving.errors.is_server_busy`) are retried with jittered
  exponential backoff, a bounded number of times; then the error names the
  request and the number of attempts;
* ``embed_users`` (`clue_keras.serving.user_embedding`) turns user histories into the dense ``[B, P, S]`` string
  tensor of the ``serving_default`` signature (docs/ARCHITECTURE.md) and
  reports a per-user error for a user the model rejects (``INVALID_ARGUMENT``,
  found by bisecting the failing batch) while everybody else still gets an
  embedding.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np

from clue_keras.serving.errors import RETRYABLE, ServingError, is_server_busy
from clue_keras.serving.user_embedding import UserEmbedding

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20
# Left free under the limit for what ByteSize cannot see (none today; cheap insurance).
_MESSAGE_SLACK_BYTES = 256


def _as_tensor_array(value) -> np.ndarray:
    """numpy array for ``tf.make_tensor_proto``: text becomes UTF-8 bytes objects."""
    array = np.asarray(value)
    if array.dtype.kind in ("U", "S", "O"):
        flat = list(array.reshape(-1))
        if not all(isinstance(v, (str, bytes)) for v in flat):
            return array  # Not text: tf.make_tensor_proto decides.
        flat = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        array = out.reshape(array.shape)
    return array


class CLUEClient(UserEmbedding):
    """Client for one model on a TF Serving-compatible gRPC server.

    Args:
      address: ``host:port`` of the server.
      model_name: ``ModelSpec.name``.
      signature: default signature for ``predict``.
      timeout_s: deadline of each RPC attempt, seconds.
      max_message_bytes: largest request sent (the server's receive limit;
        gRPC's default is 4 MiB).
      max_batch: most rows per request, whatever their size (None: no cap).
      version: pin a model version (None: the latest served).
      max_attempts: attempts per request for ``UNAVAILABLE``,
        ``DEADLINE_EXCEEDED`` and a busy server, first one included.
      initial_backoff_s, max_backoff_s: exponential backoff between attempts
        (doubling, with up to 50% random extra).
      max_response_bytes: largest response accepted.
      channel: an existing ``grpc.Channel`` to use instead of opening one.
      root_certificates: PEM bytes of the CA that signed the server's
        certificate: connect with TLS (``clue serve --ssl-config-file``, TF
        Serving's ``--ssl_config_file``).
      client_cert, client_key: PEM bytes of this client's certificate chain
        and key, for a server that verifies clients (mutual TLS).
      channel_credentials: ``grpc.ChannelCredentials`` to use instead of the
        three above (e.g. ``grpc.ssl_channel_credentials()`` for system roots).
      tls_server_name: the name to check the server certificate against when
        it differs from the host in ``address``.
      Without any of these the channel is plaintext.
    """

    def __init__(
        self,
        address: str,
        model_name: str,
        signature: str = "serving_default",
        timeout_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: Optional[int] = 256,
        version: Optional[int] = None,
        max_attempts: int = 5,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        channel: Optional[grpc.Channel] = None,
        root_certificates: Optional[bytes] = None,
        client_cert: Optional[bytes] = None,
        client_key: Optional[bytes] = None,
        channel_credentials: Optional[grpc.ChannelCredentials] = None,
        tls_server_name: Optional[str] = None,
    ):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if max_message_bytes <= _MESSAGE_SLACK_BYTES:
            raise ValueError(f"max_message_bytes must be > {_MESSAGE_SLACK_BYTES}, got {max_message_bytes}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
        if max_attempts < 1 or timeout_s <= 0:
            raise ValueError("need max_attempts >= 1 and timeout_s > 0")
        self.address = address
        self.model_name = model_name
        self.signature = signature
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.version = version
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        if (client_cert is None) != (client_key is None):
            raise ValueError("give client_cert and client_key together")
        if channel_credentials is None and (root_certificates or client_cert):
            channel_credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)
        self.tls = channel_credentials is not None
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_response_bytes),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        self._owns_channel = channel is None
        if channel is None:
            channel = (grpc.secure_channel(address, channel_credentials, options=options) if self.tls
                       else grpc.insecure_channel(address, options=options))
        self._channel = channel
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._rng = random.Random()
        self._metadata = None
        self.last_model_version: Optional[int] = None  # Version that answered the last predict.

    # -- plumbing --
    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "CLUEClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _model_spec(self, spec, signature: Optional[str] = None) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature is not None:
            spec.signature_name = signature

    def _call(self, rpc, request, what: str = ""):
        """One RPC with deadline and retries; raises ``ServingError``.

        ``what`` names the request in log lines and in the error after the last
        attempt (default: the RPC's method name)."""
        delay = self.initial_backoff_s
        what = what or getattr(rpc, "_method", b"RPC")
        what = what.decode() if isinstance(what, bytes) else what
        for attempt in range(1, self.max_attempts + 1):
            try:
                return rpc(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                busy = is_server_busy(code, details)
                retryable = code in RETRYABLE or busy
                if retryable and attempt < self.max_attempts:
                    pause = min(delay, self.max_backoff_s) * (1.0 + 0.5 * self._rng.random())
                    log.warning(
                        "%s from %s for %s (attempt %d/%d%s); retrying in %.2f s: %s",
                        code.name, self.address, what, attempt, self.max_attempts,
                        ", server busy" if busy else "", pause, details,
                    )
                    time.sleep(pause)
                    delay *= 2
                    continue
                if busy:
                    details = (f"server {self.address} busy (at its limit of concurrent RPCs) for "
                               f"{what}: gave up after {attempt} attempts: {details}")
                elif retryable:
                    details = f"{details} ({what}: gave up after {attempt} attempts)"
                if code == grpc.StatusCode.UNAVAILABLE:
                    details += ("; TLS handshake failed? check the CA (--tls-ca) and client certificate"
                                if self.tls else "; if the server uses TLS, pass --tls-ca / root_certificates")
                raise ServingError(code, details, busy=busy) from None
        raise AssertionError("unreachable")

    # -- metadata and status --
    def metadata(self, refresh: bool = False):
        """The model's ``SignatureDefMap`` (``GetModelMetadata``), cached."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        if self._metadata is None or refresh:
            request = get_model_metadata_pb2.GetModelMetadataRequest()
            self._model_spec(request.model_spec)
            request.metadata_field.append("signature_def")
            response = self._call(self._predict_stub.GetModelMetadata, request)
            signature_defs = get_model_metadata_pb2.SignatureDefMap()
            if not response.metadata["signature_def"].Unpack(signature_defs):
                raise ServingError(grpc.StatusCode.INTERNAL, "signature_def metadata is not a SignatureDefMap")
            self._metadata = signature_defs
        return self._metadata

    def input_shape(self, input_name: str, signature: Optional[str] = None) -> Optional[List[Optional[int]]]:
        """Dims of a signature input from the metadata (None = unknown dim);
        None when the input or its shape is unknown."""
        sig = self.metadata().signature_def.get(signature or self.signature)
        if sig is None or input_name not in sig.inputs:
            return None
        shape = sig.inputs[input_name].tensor_shape
        if shape.unknown_rank:
            return None
        return [None if d.size < 0 else int(d.size) for d in shape.dim]

    def status(self) -> List[Tuple[int, str, str]]:
        """``GetModelStatus`` as ``[(version, state name, error message)]``."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self._model_stub.GetModelStatus, request)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            (s.version, state_name(s.state), s.status.error_message)
            for s in response.model_version_status
        ]

    # -- predict --
    def _request(self, inputs, rows: slice, unbatched, signature, output_filter):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        for name, value in inputs.items():
            part = value if name in unbatched else value[rows]
            request.inputs[name].CopyFrom(tf.make_tensor_proto(part))
        request.output_filter.extend(output_filter or ())
        return request

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature: Optional[str] = None,
        output_filter: Optional[Sequence[str]] = None,
        unbatched: Iterable[str] = (),
    ) -> Dict[str, np.ndarray]:
        """Runs ``signature`` on ``inputs``, in as many requests as needed.

        Args:
          inputs: ``{input name: array}``; every input not in ``unbatched``
            shares dimension 0 (the batch), which is split across requests.
            Text may be ``str`` or ``bytes``.
          signature: signature name (default: the client's).
          output_filter: outputs to return (default: all).
          unbatched: inputs sent whole with every request (e.g. a candidate
            list or a scalar ``k``).

        Returns:
          ``{output name: array}``, chunks concatenated along dimension 0 in
          input order.

        Raises:
          ServingError: the server refused a request (``rows`` = the batch
            rows of the failing request), one row alone is too big for
            ``max_message_bytes`` or the server's limit (``RESOURCE_EXHAUSTED``),
            or the server stayed busy for ``max_attempts`` attempts
            (``RESOURCE_EXHAUSTED``, ``busy`` True).
          ValueError: batched inputs disagree on dimension 0.
        """
        unbatched = set(unbatched)
        arrays = {name: _as_tensor_array(v) for name, v in inputs.items()}
        unknown = unbatched - set(arrays)
        if unknown:
            raise ValueError(f"unbatched names {sorted(unknown)} are not inputs")
        sizes = {name: a.shape[0] for name, a in arrays.items() if name not in unbatched and a.ndim}
        if not sizes:
            raise ValueError("predict needs at least one batched input of rank >= 1")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"batched inputs disagree on dimension 0: {sizes}")
        n = next(iter(sizes.values()))
        signature = signature or self.signature
        step = self.max_batch or max(n, 1)
        for _ in range(3):
            parts: List[Tuple[int, Dict[str, np.ndarray]]] = []
            for lo in range(0, n, step):
                self._predict_range(arrays, lo, min(n, lo + step), unbatched, signature, output_filter, parts)
            if not parts:  # n == 0: let the server say what it thinks of an empty batch.
                self._predict_range(arrays, 0, 0, unbatched, signature, output_filter, parts)
            versions = sorted({version for version, _ in parts})
            if len(versions) == 1:
                break
            # A new version was swapped in between two chunks: do it again.
            log.info("chunks answered by model versions %s; repeating the call", versions)
        else:
            raise ServingError(
                grpc.StatusCode.ABORTED,
                f"chunks kept being answered by different model versions {versions}; "
                "pin a version (CLUEClient(version=...))",
            )
        self.last_model_version = versions[0]
        if len(parts) == 1:
            return parts[0][1]
        return {
            name: np.concatenate([p[name] for _, p in parts], axis=0) for name in parts[0][1]
        }

    def served_version(self) -> int:
        """The version the server answers with now (pinned one if set)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        return int(self._call(self._predict_stub.GetModelMetadata, request).model_spec.version.value)

    def _predict_range(self, arrays, lo, hi, unbatched, signature, output_filter, parts) -> None:
        import tensorflow as tf

        budget = self.max_message_bytes - _MESSAGE_SLACK_BYTES
        request = self._request(arrays, slice(lo, hi), unbatched, signature, output_filter)
        size = request.ByteSize()
        rows = hi - lo
        if size > budget:
            if rows <= 1:
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"row {lo} alone makes a {size}-byte request, over the "
                    f"{self.max_message_bytes}-byte message limit",
                    rows=[lo],
                )
            pieces = min(rows, max(2, math.ceil(size / budget)))
            bounds = np.linspace(lo, hi, pieces + 1).round().astype(int)
            for a, b in zip(bounds[:-1], bounds[1:]):
                if b > a:
                    self._predict_range(arrays, int(a), int(b), unbatched, signature, output_filter, parts)
            return
        what = f"Predict of {self.model_name!r} rows {lo}-{hi - 1}" if rows else \
            f"Predict of {self.model_name!r} (empty batch)"
        try:
            response = self._call(self._predict_stub.Predict, request, what)
        except ServingError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not e.busy and rows > 1:
                mid = (lo + hi) // 2  # Server limit below ours, or response too big.
                self._predict_range(arrays, lo, mid, unbatched, signature, output_filter, parts)
                self._predict_range(arrays, mid, hi, unbatched, signature, output_filter, parts)
                return
            raise ServingError(e.code, e.details, rows=range(lo, hi), busy=e.busy) from None
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        parts.append((int(response.model_spec.version.value), outputs))
