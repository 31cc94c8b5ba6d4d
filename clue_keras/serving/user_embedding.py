"""CLUE user embedding on top of a PredictionService client.

`UserEmbedding` is mixed into `clue_keras.serving.client.CLUEClient`: it
turns user histories into the dense ``[B, P, S]`` string tensor of the
``serving_default`` signature (docs/ARCHITECTURE.md) and reports a per-user
error for a user the model rejects (``INVALID_ARGUMENT``, found by bisecting
the failing batch) while everybody else still gets an embedding. The layout
(services in P order, S) comes from the model itself: its ``clue_metadata``
signature (`clue_keras.serving.model_info`), listed by ``GetModelMetadata``
and run once with an empty ``Predict``, on TF Serving and ``clue serve``
alike. It needs ``predict``, ``metadata``, ``input_shape``, ``_call``,
``_model_spec`` and ``_predict_stub`` from the class it is mixed into.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np

from clue_keras.serving.errors import RETRYABLE, ServingError
from clue_keras.serving.model_info import METADATA_SIGNATURE, ModelInfo

log = logging.getLogger(__name__)


class UserEmbedding:
    """``embed_users`` and its helpers (a mixin of `CLUEClient`)."""

    def model_info(self, refresh: bool = False) -> Optional[ModelInfo]:
        """The model's self-description (its ``clue_metadata`` signature), cached;
        None for a model without one (an older export, or not a CLUE model).

        Raises ServingError if the server cannot be asked, ValueError if the
        description is malformed or of a newer format.
        """
        cache = getattr(self, "_model_info_cache", None)
        if cache is not None and not refresh:
            return cache[0]
        info = None
        if METADATA_SIGNATURE in self.metadata(refresh).signature_def:
            import tensorflow as tf
            from tensorflow_serving.apis import predict_pb2

            request = predict_pb2.PredictRequest()  # the signature takes no inputs
            self._model_spec(request.model_spec, METADATA_SIGNATURE)
            response = self._call(self._predict_stub.Predict, request)
            outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
            info = ModelInfo.from_outputs(outputs, source=f"model {self.model_name!r} {METADATA_SIGNATURE}")
        self._model_info_cache = (info,)
        return info

    def resolve_layout(
        self, services: Optional[Sequence[str]], max_items: Optional[int], input_name: str = "item_texts"
    ) -> Tuple[List[str], int]:
        """Services (P, in model order) and S for ``embed_users``.

        Both default to the model's own description (``model_info``). A model
        without one (an export older than ``clue_metadata``) needs
        ``services``; ``max_items`` then defaults to the S of the signature's
        ``[B, P, S]`` input. What is given is checked against what the model
        says. Error messages name the ``clue embed`` options.
        """
        shape, info = None, None
        try:
            shape = self.input_shape(input_name)
            info = self.model_info()
        except ServingError as e:
            if services is None or max_items is None:
                raise
            log.warning("no model metadata (%s); using the given layout", e)
        if services is None:
            if info is None:
                raise ValueError(
                    f"model {self.model_name!r} does not describe its input layout (no "
                    f"{METADATA_SIGNATURE!r} signature: exported by an older clue, or not a CLUE "
                    "model); pass --vocab <the export's assets directory> or --services a,b,..."
                )
            services = info.services
        services = list(services)
        if info is not None:
            if services != info.services:
                raise ValueError(f"--services {','.join(services)} differ from the model's services "
                                 f"{','.join(info.services)} (in this order)")
            if max_items is None:
                max_items = info.max_items
            elif max_items != info.max_items:
                raise ValueError(f"--max-items {max_items} differs from the model's S={info.max_items}")
        if shape is not None:
            if len(shape) != 3:
                raise ValueError(f"signature input {input_name!r} has shape {shape}, expected [B, P, S]")
            if shape[1] is not None and shape[1] != len(services):
                raise ValueError(f"model expects P={shape[1]} services, got {len(services)}: "
                                 f"{','.join(services)} (--services / --vocab)")
            if max_items is None:
                max_items = shape[2]
            elif shape[2] is not None and shape[2] != max_items:
                raise ValueError(f"model expects S={shape[2]} items per service, got {max_items} "
                                 "(--max-items / --vocab)")
        if max_items is None or max_items < 1:
            raise ValueError("S, the items per service, is unknown: pass --max-items or --vocab")
        return services, int(max_items)

    @staticmethod
    def user_texts(user: Mapping, services: Sequence[str], max_items: int) -> np.ndarray:
        """One user's ``[P, S]`` object array of UTF-8 bytes, "" = padding.

        ``user["items"]`` maps service -> texts, oldest first; the newest
        ``max_items`` non-blank texts of each service are kept, left-aligned.
        Raises ValueError for unknown services or non-text items.
        """
        items = user.get("items")
        if not isinstance(items, Mapping):
            raise ValueError(f"'items' must be an object of service -> list of texts, got {type(items).__name__}")
        unknown = sorted(set(items) - set(services))
        if unknown:
            raise ValueError(f"unknown services {unknown}; the model knows {list(services)}")
        out = np.full((len(services), max_items), b"", dtype=object)
        for p, service in enumerate(services):
            texts = items.get(service) or []
            if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
                raise ValueError(f"items[{service!r}] must be a list of texts")
            kept = []
            for j, text in enumerate(texts):
                if isinstance(text, str):
                    text = text.encode("utf-8")
                elif not isinstance(text, bytes):
                    raise ValueError(f"items[{service!r}][{j}] is {type(text).__name__}, not text")
                if text.strip():
                    kept.append(text)
            kept = kept[-max_items:]
            out[p, : len(kept)] = kept
        return out

    def embed_users(
        self,
        users: Sequence[Mapping],
        services: Optional[Sequence[str]] = None,
        max_items: Optional[int] = None,
        batch_size: int = 64,
        input_name: str = "item_texts",
        output: str = "embedding",
    ) -> Tuple[np.ndarray, Dict[str, str]]:
        """Embeds users with the client's signature.

        Args:
          users: ``{"user_id": str, "items": {service: [text, ...]}}`` each,
            texts oldest first.
          services: the model's services in order; default: what the model
            says (``model_info``), needed for a model without ``clue_metadata``.
          max_items: S; default from the model.
          batch_size: users per ``predict`` call (which may split further).
          input_name, output: signature input ``[B, P, S]`` string and output
            ``[B, E]`` float names.

        Returns:
          ``(embeddings, errors)``: float32 ``[len(users), E]`` in input
          order, NaN rows for failed users (``[len(users), 0]`` if none
          succeeded), and ``{user_id: message}`` for the failed ones.

        Raises:
          ServingError: for errors that concern the whole model rather than a
            user (unknown model or signature, ...).
          ValueError: a user without ``user_id``, or a bad layout.
        """
        results, row_errors = self.embed_users_indexed(
            users, services, max_items, batch_size, input_name, output
        )
        errors = {str(users[i]["user_id"]): message for i, message in row_errors.items()}
        if not results:
            return np.full((len(users), 0), np.nan, dtype=np.float32), errors
        dim = next(iter(results.values())).shape[-1]
        embeddings = np.full((len(users), dim), np.nan, dtype=np.float32)
        for i, vector in results.items():
            embeddings[i] = vector
        return embeddings, errors

    def embed_users_indexed(
        self,
        users: Sequence[Mapping],
        services: Optional[Sequence[str]] = None,
        max_items: Optional[int] = None,
        batch_size: int = 64,
        input_name: str = "item_texts",
        output: str = "embedding",
    ) -> Tuple[Dict[int, np.ndarray], Dict[int, str]]:
        """``embed_users`` keyed by position in ``users``: ``({row: float32
        [E] vector}, {row: error message})``; every row is in exactly one."""
        services, max_items = self.resolve_layout(services, max_items, input_name)
        errors: Dict[int, str] = {}
        texts = np.full((len(users), len(services), max_items), b"", dtype=object)
        valid: List[int] = []
        for i, user in enumerate(users):
            if not isinstance(user, Mapping) or "user_id" not in user:
                raise ValueError(f"users[{i}] has no 'user_id'")
            try:
                texts[i] = self.user_texts(user, services, max_items)
                valid.append(i)
            except ValueError as e:
                errors[i] = f"invalid user: {e}"
        results: Dict[int, np.ndarray] = {}
        for start in range(0, len(valid), batch_size):
            self._embed_rows(valid[start : start + batch_size], texts, input_name, output, results, errors)
        return results, errors

    def _embed_rows(self, rows, texts, input_name, output, results, errors) -> None:
        try:
            out = self.predict({input_name: texts[rows]}, output_filter=[output])[output]
        except ServingError as e:
            per_user = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
            # Bisect to find the user(s) the model (or the size limit) rejects; a server
            # still busy after the client's retries is not bisected (more requests would
            # not help): its users get the error.
            if e.code in per_user and not e.busy and len(rows) > 1:
                mid = len(rows) // 2
                self._embed_rows(rows[:mid], texts, input_name, output, results, errors)
                self._embed_rows(rows[mid:], texts, input_name, output, results, errors)
                return
            if e.code in per_user or e.code in RETRYABLE:
                for i in rows:  # This user, or a batch the server could not be reached for.
                    errors[i] = f"{e.code.name}: {e.details}"
                return
            raise
        for i, vector in zip(rows, np.asarray(out, dtype=np.float32)):
            results[i] = vector
