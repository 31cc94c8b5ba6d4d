"""TF Serving's SavedModel warm-up file: write it, read it, replay it.

TensorFlow Serving replays ``<version>/assets.extra/tf_serving_warmup_requests``
(a TFRecord file of ``tensorflow.serving.PredictionLog`` records, at most
:data:`MAX_RECORDS`) right after loading a version and before serving it, so
the first real request does not pay for the lazy work of the first run of
each graph (function instantiation, Grappler, kernel and table set-up).
``clue_keras.export`` writes one ``PredictLog`` per signature with small
realistic inputs; ``replay_warmup`` runs them the same way for any loader of
the SavedModel (``clue serve``, benchmarks, tests)::

    loaded = tf.saved_model.load(path)
    replay_warmup(path, signature_caller(loaded))
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

#: Where TF Serving looks for the warm-up records, relative to the version directory.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
#: TF Serving refuses a warm-up file with more records than this.
MAX_RECORDS = 1000
#: The signature TF Serving runs when a request names none.
DEFAULT_SIGNATURE = "serving_default"

#: Item texts of the warm-up users: several scripts, lengths and kinds of item.
SAMPLE_TEXTS = (
    "wireless noise cancelling headphones",
    "Champions League final highlights",
    "서울 내일 날씨",
    "how to bake sourdough bread at home",
    "Galaxy S24 Ultra 256GB",
    "café crème brûlée recipe",
    "election results live updates",
    "best running shoes for beginners 2024",
)

Request = Tuple[str, Dict[str, np.ndarray]]  # (signature name, {input name: array})


def sample_user_texts(num_services: int, max_items: int) -> np.ndarray:
    """Two warm-up users as object ``[2, P, S]`` UTF-8 bytes ("" = padding).

    User 0 has up to three items in every service; user 1 has one item in the
    first service only (padding and empty services, as in real traffic).
    """
    texts = [t.encode("utf-8") for t in SAMPLE_TEXTS]
    out = np.full((2, num_services, max_items), b"", dtype=object)
    for p in range(num_services):
        for j in range(min(3, max_items)):
            out[0, p, j] = texts[(3 * p + j) % len(texts)]
    out[1, 0, 0] = texts[-1]
    return out


def write_warmup_requests(saved_model_dir: str, requests: Sequence[Request]) -> str:
    """Writes ``requests`` as ``PredictLog`` records to the warm-up file; returns its path."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if len(requests) > MAX_RECORDS:
        raise ValueError(f"{len(requests)} warm-up requests; TF Serving reads at most {MAX_RECORDS}")
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str) -> List[Request]:
    """The warm-up requests of a SavedModel, in file order ([] when it has no warm-up file).

    Raises ValueError naming the file and record for a record that is not a
    ``PredictionLog`` with a ``predict_log`` (the only kind CLUE writes and
    ``clue serve`` answers), or for more than :data:`MAX_RECORDS` records.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    requests: List[Request] = []
    for index, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        if index >= MAX_RECORDS:
            raise ValueError(f"{path}: more than {MAX_RECORDS} warm-up records")
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(raw)
        except DecodeError as e:
            raise ValueError(f"{path}: record {index} is not a PredictionLog: {e}") from None
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            raise ValueError(f"{path}: record {index} is a {kind or 'empty'} record; "
                             "only predict_log is supported")
        request = log.predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        requests.append((request.model_spec.signature_name or DEFAULT_SIGNATURE, inputs))
    return requests


def replay_warmup(saved_model_dir: str,
                  call_signature: Callable[[str, Dict[str, np.ndarray]], Mapping],
                  iterations: int = 1) -> List[Tuple[str, float]]:
    """Runs every warm-up request ``iterations`` times through ``call_signature``.

    Args:
      saved_model_dir: the version directory (its warm-up file is read).
      call_signature: ``(signature name, {input name: array}) -> outputs``,
        e.g. :func:`signature_caller` of the loaded SavedModel. Its errors
        propagate: like TF Serving, a version whose warm-up fails should not
        be served.
      iterations: replays per record (TF Serving's ``num_request_iterations``).

    Returns:
      ``[(signature name, seconds)]`` per call, in order ([] without a warm-up file).
    """
    done: List[Tuple[str, float]] = []
    for signature, inputs in read_warmup_requests(saved_model_dir):
        for _ in range(iterations):
            start = time.perf_counter()
            outputs = call_signature(signature, inputs)
            for value in (outputs or {}).values():  # the work is done once values exist
                getattr(value, "numpy", lambda: None)()
            done.append((signature, time.perf_counter() - start))
    return done


def signature_caller(loaded) -> Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]:
    """``call_signature`` for a ``tf.saved_model.load`` result: numpy in, numpy out."""
    import tensorflow as tf

    def call(signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        fn = loaded.signatures[signature]
        outputs = fn(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    return call
