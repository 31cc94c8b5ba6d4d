"""TF Serving's gRPC servicers over :class:`~clue_keras.serving.model_manager.ModelManager` s.

One server may serve several models (TF Serving's ``models.config``): the
servicers take ``{model name: ModelManager}`` (or a single manager) and answer
each request from the manager its ``ModelSpec.name`` names.

* ``PredictionServicer`` (``tensorflow.serving.PredictionService``):
  ``Predict``, ``GetModelMetadata`` (``Classify``, ``Regress``,
  ``MultiInference`` answer ``UNIMPLEMENTED``, from the generated base class);
* ``ModelServicer`` (``tensorflow.serving.ModelService``): ``GetModelStatus``
  (``HandleReloadConfigRequest`` answers ``UNIMPLEMENTED``).

Status codes follow TF Serving (``servables/tensorflow/predict_util.cc``); see
:mod:`clue_keras.serving.server` for the table. Importing this module imports
``tensorflow_serving.apis`` (and so TensorFlow).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Union

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from clue_keras.serving.model_manager import LoadedVersion, ModelManager

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"

_STATUS_BY_INT = {code.value[0]: code for code in grpc.StatusCode}


class _Abort(Exception):
    """A request error: ends the RPC with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _format_shape(shape) -> str:
    dims = getattr(shape, "as_list", lambda: list(shape))()
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


Managers = Union[ModelManager, Mapping[str, ModelManager]]


def as_managers(managers: Managers) -> Dict[str, ModelManager]:
    """``{model name: manager}`` from one manager or a mapping of them."""
    if isinstance(managers, ModelManager):
        return {managers.model_name: managers}
    return dict(managers)


def _served(managers: Dict[str, ModelManager]) -> str:
    names = sorted(managers)
    return (f"model {names[0]!r}" if len(names) == 1
            else "models " + ", ".join(repr(n) for n in names))


def _manager_for(managers: Dict[str, ModelManager], name: str, request_str: str) -> ModelManager:
    if name not in managers:
        raise _Abort(
            grpc.StatusCode.NOT_FOUND,
            f"Servable not found for request: {request_str}; this server serves "
            f"{_served(managers)}",
        )
    return managers[name]


def _resolve(managers: Dict[str, ModelManager], model_spec) -> LoadedVersion:
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
    manager = _manager_for(managers, name, request_str)
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
    """Turns ``_Abort`` and TensorFlow errors raised by ``method`` into statuses.

    ``context.abort`` is called *after* the ``except`` block: called inside it,
    gRPC's abort exception (kept in a reference cycle of the RPC's state) would
    chain ours, whose traceback holds the request's frames and so the model
    version it used, keeping a replaced version in memory until a full garbage
    collection.
    """

    def wrapper(self, request, context):
        import tensorflow as tf

        try:
            return method(self, request, context)
        except _Abort as e:
            code, message = e.code, e.message
        except tf.errors.OpError as e:
            code, message = _STATUS_BY_INT.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message
        except Exception as e:
            log.exception("%s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
        context.abort(code, message)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _wanted_outputs(fn, output_filter) -> List[str]:
    """The requested output aliases (all, sorted, when the filter is empty)."""
    wanted: List[str] = []
    output_names = sorted(fn.structured_outputs)
    for alias in output_filter:
        if alias not in fn.structured_outputs:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs "
                f"expected to be in the set {{{','.join(output_names)}}}.",
            )
        if alias in wanted:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        wanted.append(alias)
    return wanted or output_names


def _feed(name: str, proto, spec, signature_name: str, max_batch: int, max_elements: int):
    """One request input as a tensor of the signature's dtype, checked against its spec.

    Dtype, shape, batch and size are checked on the ``TensorProto``'s declared
    shape *before* decoding it: a TensorProto may declare a huge shape and
    carry one value that ``make_ndarray`` repeats to fill it.
    """
    import tensorflow as tf

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
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"input {name!r}: a request tensor needs a fully known shape")
    if not spec.shape.is_compatible_with(dims):
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} of signature {signature_name!r}: expected shape "
            f"{_format_shape(spec.shape)}, got {_format_shape(dims)}",
        )
    if spec.shape.rank and spec.shape[0] is None:  # A batch dimension.
        if dims[0] == 0:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} has an empty batch (dimension 0 is 0)",
            )
        if max_batch and dims[0] > max_batch:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} has batch size {dims[0]}, over this "
                f"server's limit of {max_batch} (--max-batch); split the request",
            )
    elements = 1
    for d in dims:
        elements *= d
    if elements > max_elements:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} declares {elements} elements, over this server's limit "
            f"of {max_elements} (one per byte of --max-request-bytes)",
        )
    try:
        value = tf.make_ndarray(proto)
    except Exception as e:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r}: cannot decode its TensorProto: {e}",
        ) from e
    return tf.constant(value, dtype=spec.dtype)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``Predict`` and ``GetModelMetadata`` on the manager's loaded version.

    Args:
      manager: the model versions to answer from: one manager, or
        ``{model name: manager}`` for several models.
      max_batch: largest dimension 0 accepted for each input whose signature
        leaves it unknown; 0 means no limit.
      max_elements: largest element count of one input tensor (the server
        passes its request byte limit).
    """

    def __init__(self, manager: Managers, max_batch: int, max_elements: int = 4 << 20):
        self.managers = as_managers(manager)
        self.max_batch = max_batch
        self.max_elements = max_elements

    @_rpc
    def Predict(self, request, context):
        """TF Serving's Predict on the requested (or latest) version."""
        import tensorflow as tf

        loaded = _resolve(self.managers, request.model_spec)
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
        outputs_wanted = _wanted_outputs(fn, request.output_filter)
        feeds = {name: _feed(name, request.inputs[name], specs[name], signature_name,
                             self.max_batch, self.max_elements)
                 for name in sorted(specs)}
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining <= 0:  # Expired while queued: skip the work.
            raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the model ran")

        results = fn(**feeds)
        response = predict_pb2.PredictResponse()
        _fill_model_spec(response.model_spec, request.model_spec.name, loaded.version,
                         signature_name)
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
        loaded = _resolve(self.managers, request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_model_spec(response.model_spec, request.model_spec.name, loaded.version)
        response.metadata["signature_def"].Pack(loaded.signature_defs)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``GetModelStatus``: every version the model's manager has tried."""

    def __init__(self, manager: Managers):
        self.managers = as_managers(manager)

    @_rpc
    def GetModelStatus(self, request, context):
        """Every version this server has tried: AVAILABLE, LOADING or END."""
        spec = request.model_spec
        if spec.name not in self.managers:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find any versions of model {spec.name}; this server serves "
                f"{_served(self.managers)}",
            )
        manager = self.managers[spec.name]
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
