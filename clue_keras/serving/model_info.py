"""What a CLUE serving SavedModel says about itself: the ``clue_metadata`` signature.

TF Serving's ``GetModelMetadata`` returns only the ``SignatureDef`` map, so
the description travels as one more signature, which any TF Serving-compatible
server lists there and runs with ``Predict``:

* ``clue_metadata``: no inputs -> constants (the graph adds only ``Const``
  ops), one output per field of :class:`ModelInfo`:

  ================== ============= =============================================
  output             dtype [shape] meaning
  ================== ============= =============================================
  format_version     int32 []      :data:`FORMAT_VERSION` of this description
  services           string [P]    the P axis of ``item_texts``, in order
  max_items          int32 []      S, item texts per service
  max_tokens         int32 []      L, ids per item (``embed_tokens``)
  embedding_dim      int32 []      width of ``embedding`` (P * D)
  service_dim        int32 []      D, width of ``service_embeddings``
  item_dim           int32 []      width of ``item_embedding``
  vocab_size         int32 []      ids are in [0, vocab_size)
  preset             string []     the architecture's preset name, or "custom"
  data_fingerprint   string []     ``sha256:<hex>`` of the training data's
                                   preprocessing output (see clue_keras.export)
  ================== ============= =============================================

A client first looks for ``clue_metadata`` in ``GetModelMetadata`` (an
export without it predates the description: the client then needs the layout
from ``--vocab``/``--services``), then calls it once with an empty
``PredictRequest``. No file beside the model is needed.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping

import numpy as np

#: Signature name of the description.
METADATA_SIGNATURE = "clue_metadata"
#: Bumped when a field changes meaning; added fields keep the version.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A CLUE serving model's self-description (see the module docstring)."""

    services: List[str]
    max_items: int
    max_tokens: int
    embedding_dim: int
    service_dim: int
    item_dim: int
    vocab_size: int
    preset: str
    data_fingerprint: str
    format_version: int = FORMAT_VERSION

    _STRINGS = ("preset", "data_fingerprint")
    _INTS = ("max_items", "max_tokens", "embedding_dim", "service_dim", "item_dim", "vocab_size",
             "format_version")

    def outputs(self) -> Dict[str, np.ndarray]:
        """``{output name: numpy value}`` for the signature's constants."""
        out: Dict[str, np.ndarray] = {"services": np.array([s.encode("utf-8") for s in self.services],
                                                           dtype=object)}
        for name in self._INTS:
            out[name] = np.array(getattr(self, name), np.int32)
        for name in self._STRINGS:
            out[name] = np.array(getattr(self, name).encode("utf-8"), dtype=object)
        return out

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, np.ndarray], source: str = METADATA_SIGNATURE) -> "ModelInfo":
        """Parses the signature's outputs (numpy arrays, text as bytes).

        Raises ValueError naming ``source`` for a missing output or a format
        version newer than this code reads.
        """
        def text(value) -> str:
            value = value.item() if isinstance(value, np.ndarray) else value
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)

        version = int(np.asarray(outputs.get("format_version", -1)))
        if version > FORMAT_VERSION:
            raise ValueError(f"{source}: format version {version} is newer than this clue reads "
                             f"({FORMAT_VERSION}); upgrade clue")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in outputs]
        if missing:
            raise ValueError(f"{source}: outputs {missing} missing (got {sorted(outputs)})")
        values = {name: int(np.asarray(outputs[name])) for name in cls._INTS}
        values.update({name: text(outputs[name]) for name in cls._STRINGS})
        services = [text(s) for s in np.asarray(outputs["services"]).reshape(-1)]
        return cls(services=services, **values)

    def summary(self) -> str:
        """One line for people: preset, layout, widths, data."""
        return (f"preset {self.preset}, services {','.join(self.services)} (S={self.max_items}, "
                f"L={self.max_tokens}), {self.embedding_dim}-D embeddings, "
                f"data {self.data_fingerprint[:19]}")
