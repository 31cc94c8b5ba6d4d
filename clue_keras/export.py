"""SavedModel export with the serving signatures of docs/ARCHITECTURE.md.

Signatures (P services in ``clue_vocab.json`` order, S items, L tokens, D = the
encoder's per-service embedding width):

* ``serving_default``: ``item_texts`` string [B, P, S] ("" = padding) ->
  ``embedding`` float32 [B, P*D] (concatenated per-service embeddings, each
  L2-normalised, then the whole vector L2-normalised; all zeros for a user with
  no item at all) and ``service_embeddings`` float32 [B, P, D].
* ``embed_tokens``: ``token_ids`` int32 [B, P, S, L] -> the same outputs.
* ``embed_items``: ``item_texts`` string [N] -> ``item_embedding`` float32
  [N, hidden] (child-transformer item vector h_i, L2-normalised; items get the
  generic ``<item>`` service token).
* ``retrieve``: ``item_texts`` [B, P, S], ``candidate_texts`` [C], ``k`` int32
  scalar -> ``scores`` float32 [B, k], ``indices`` int32 [B, k]: brute-force
  top-k by cosine between the user and each candidate embedded as a one-item
  history in every service (stock TF Serving has no ScaNN ops).
* ``clue_metadata``: no inputs -> the model's self-description as constants
  (``clue_keras.serving.model_info``: ``format_version``, ``services`` [P],
  ``max_items`` S, ``max_tokens`` L, ``embedding_dim`` P*D, ``service_dim``
  D, ``item_dim``, ``vocab_size``, ``preset``, ``data_fingerprint``).

Self-description: everything a client needs to call the model is on the
serving side. TF Serving's ``GetModelMetadata`` returns only the signature
map, so the description is one more signature there: a client sees
``clue_metadata`` listed (with its output dtypes and shapes) and runs it once
with an empty ``PredictRequest``; stock TF Serving and ``clue serve`` both
answer a Predict with no inputs on a signature with none. The graph adds only
``Const`` ops. ``data_fingerprint`` is ``sha256:`` of the preprocessing output
the model was trained from (``stats.json`` beside the vocabulary directory, if
there, and the vocabulary files), unless given. ``preset`` is the preset whose
architecture the encoder has (``custom`` if none), unless given.

Warm-up: ``assets.extra/tf_serving_warmup_requests`` holds one
``PredictionLog`` (``PredictLog``) per signature, in ``SIGNATURES`` order, with
two small users (``clue_keras.serving.warmup.sample_user_texts``), their ids
for ``embed_tokens``, three items, four candidates and ``k`` = 2, and the empty
request of ``clue_metadata``. TF Serving replays it before serving a version;
``clue_keras.serving.warmup.replay_warmup`` does the same for other loaders.

Tokenisation runs in the graph with the training BPE; the graph uses only core
TF ops plus ``RegexSplitWithOffsets`` (stock TF Serving's old TF Text).
The directory is written under a temporary name and renamed into place, with
``saved_model.pb`` present only once everything else is.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from clue_keras.atomic import abspath, atomic_dir
from clue_keras.encoder import CLUEEncoder
from clue_keras.pretrainer import CLUEPretrainer
from clue_keras.serving.model_info import METADATA_SIGNATURE, ModelInfo
from clue_keras.serving.warmup import sample_user_texts, write_warmup_requests

SIGNATURES = ("serving_default", "embed_tokens", "embed_items", "retrieve", METADATA_SIGNATURE)
VOCAB_FILES = ("vocab.json", "merges.txt", "clue_vocab.json")
MODEL_CONFIG_ASSET = "clue_model.json"


def _l2(x, axis=-1):
    return x / tf.maximum(tf.norm(x, axis=axis, keepdims=True), 1e-12)


class CLUEServingModule(tf.Module):
    """tf.Module holding the encoder, the in-graph tokenizer and the vocab asset."""

    def __init__(self, encoder: CLUEEncoder, vocab_dir: str, description: ModelInfo):
        super().__init__(name="clue_serving")
        from clue_keras.tokenizer import InGraphTokenizer, load_vocab_info

        self.encoder = encoder
        self.tokenizer = InGraphTokenizer(vocab_dir)
        info = load_vocab_info(vocab_dir)
        self.num_services = len(info.services)
        self.max_items, self.max_tokens = info.max_items, info.max_tokens
        self.item_token = int(info.special_tokens["<item>"])
        # The vocabulary travels with the model: assets/{vocab.json, merges.txt,
        # clue_vocab.json}, so <export>/assets is itself a vocab directory.
        self.vocab_assets = [tf.saved_model.Asset(os.path.join(vocab_dir, name))
                             for name in VOCAB_FILES]
        self.description = description
        p, s, l = self.num_services, self.max_items, self.max_tokens

        self.serving_default = tf.function(
            self._serving_default,
            input_signature=[tf.TensorSpec([None, p, s], tf.string, name="item_texts")])
        self.embed_tokens = tf.function(
            self._embed_tokens,
            input_signature=[tf.TensorSpec([None, p, s, l], tf.int32, name="token_ids")])
        self.embed_items = tf.function(
            self._embed_items,
            input_signature=[tf.TensorSpec([None], tf.string, name="item_texts")])
        self.retrieve = tf.function(
            self._retrieve,
            input_signature=[tf.TensorSpec([None, p, s], tf.string, name="item_texts"),
                             tf.TensorSpec([None], tf.string, name="candidate_texts"),
                             tf.TensorSpec([], tf.int32, name="k")])
        self.clue_metadata = tf.function(self._clue_metadata, input_signature=[])

    def _users(self, token_ids):
        out = self.encoder({"token_ids": token_ids}, training=False)
        per_service = _l2(tf.cast(out["user_embedding"], tf.float32))     # zeros stay zeros
        b = tf.shape(per_service)[0]
        flat = tf.reshape(per_service, [b, self.num_services * self.encoder.embedding_dim])
        return {"embedding": _l2(flat), "service_embeddings": per_service}

    def _embed_tokens(self, token_ids):
        return self._users(token_ids)

    def _serving_default(self, item_texts):
        return self._users(self.tokenizer.tokenize_users(item_texts))

    def _item_ids(self, texts):
        service = tf.fill(tf.shape(texts), tf.constant(self.item_token, tf.int32))
        return self.tokenizer(texts, service)                           # [N, L]

    def _embed_items(self, item_texts):
        h = self.encoder.encode_items(self._item_ids(item_texts), training=False)
        return {"item_embedding": _l2(tf.cast(h, tf.float32))}

    def _retrieve(self, item_texts, candidate_texts, k):
        user = self._users(self.tokenizer.tokenize_users(item_texts))["embedding"]   # [B, E]
        c = tf.shape(candidate_texts)[0]
        # Candidate c as a user whose only item is c, in every service: [C, P, S] texts.
        first = tf.tile(candidate_texts[:, None, None], [1, self.num_services, 1])
        pad = tf.fill([c, self.num_services, self.max_items - 1], "")
        hist = tf.concat([first, pad], axis=2)
        cand = self._users(self.tokenizer.tokenize_users(hist))["embedding"]        # [C, E]
        scores = tf.matmul(user, cand, transpose_b=True)
        top = tf.math.top_k(scores, k=tf.minimum(k, c))
        return {"scores": top.values, "indices": tf.cast(top.indices, tf.int32)}

    def _clue_metadata(self):
        return {name: tf.constant(value) for name, value in self.description.outputs().items()}


def _preset_of(config: Dict) -> str:
    """The preset whose architecture ``config`` (an encoder config) has, else "custom"
    (the vocabulary size is the trained BPE's, so it is not compared)."""
    from clue_keras.config import PRESETS

    for name, mc in PRESETS.items():
        if (config.get("max_items"), config.get("max_tokens"), config.get("hidden_dim"),
                config.get("child_layers"), config.get("parent_layers"), config.get("num_heads"),
                config.get("intermediate_dim"), config.get("output_dim") or config.get("hidden_dim")) == (
                mc.max_items, mc.max_tokens, mc.hidden_dim, mc.child_layers, mc.parent_layers,
                mc.num_heads, mc.intermediate_dim, mc.embedding_dim):
            return name
    return "custom"


def data_fingerprint(vocab_dir: str) -> str:
    """``sha256:<hex>`` of the preprocessing output a model is trained from:
    ``stats.json`` beside ``vocab_dir`` (when there) and the vocabulary files."""
    digest = hashlib.sha256()
    parent = os.path.dirname(vocab_dir.rstrip("/"))
    for path in [os.path.join(parent, "stats.json")] + [os.path.join(vocab_dir, n) for n in VOCAB_FILES]:
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                content = f.read()
            digest.update(f"{os.path.basename(path)}:{len(content)}:".encode() + content)
    return "sha256:" + digest.hexdigest()


def model_info(encoder: CLUEEncoder, vocab_dir: str, preset: Optional[str] = None,
               fingerprint: Optional[str] = None) -> ModelInfo:
    """The ``clue_metadata`` description of ``encoder`` served with ``vocab_dir``."""
    from clue_keras.tokenizer import load_vocab_info

    vocab = load_vocab_info(vocab_dir)
    config = encoder.get_config()
    d = encoder.embedding_dim
    return ModelInfo(
        services=list(vocab.services), max_items=vocab.max_items, max_tokens=vocab.max_tokens,
        embedding_dim=len(vocab.services) * d, service_dim=d, item_dim=int(config["hidden_dim"]),
        vocab_size=vocab.vocab_size, preset=preset or _preset_of(config),
        data_fingerprint=fingerprint or data_fingerprint(vocab_dir))


def warmup_requests(vocab_dir: str) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """One small realistic request per signature, in ``SIGNATURES`` order."""
    from clue_keras.tokenizer import OfflineTokenizer

    tokenizer = OfflineTokenizer(vocab_dir)  # the graph's ids, without touching its BPE cache
    vocab = tokenizer.info
    users = sample_user_texts(len(vocab.services), vocab.max_items)          # [2, P, S]
    ids = np.zeros(users.shape + (vocab.max_tokens,), np.int32)
    for b, p, s in np.ndindex(users.shape):
        if users[b, p, s]:
            row = tokenizer.encode_item(users[b, p, s].decode("utf-8"), vocab.services[p])
            ids[b, p, s, : len(row)] = row
    items = np.array([t for t in users[0].reshape(-1) if t][:3], dtype=object)
    candidates = np.array([t for t in users[0, ::-1].reshape(-1) if t][:4], dtype=object)
    return [
        ("serving_default", {"item_texts": users}),
        ("embed_tokens", {"token_ids": ids}),
        ("embed_items", {"item_texts": items}),
        ("retrieve", {"item_texts": users, "candidate_texts": candidates,
                      "k": np.array(2, np.int32)}),
        (METADATA_SIGNATURE, {}),
    ]


def export_saved_model(model: Union[CLUEPretrainer, CLUEEncoder], vocab_dir: str,
                       export_dir: str, preset: Optional[str] = None,
                       fingerprint: Optional[str] = None) -> str:
    """Writes the serving SavedModel to ``export_dir`` atomically; returns the path.

    ``export_dir`` must not exist or be an empty directory (TFX pre-creates it).
    ``preset`` and ``fingerprint`` override what ``clue_metadata`` reports
    (default: inferred, see the module docstring). The warm-up file is written
    before the directory is renamed into place.
    """
    encoder = model.encoder if isinstance(model, CLUEPretrainer) else model
    export_dir = abspath(export_dir)  # a gs:// one: built locally, then copied (atomic_dir)
    info = model_info(encoder, vocab_dir, preset, fingerprint)
    with atomic_dir(export_dir, prefix=".tmp-export-") as tmp:
        module = CLUEServingModule(encoder, vocab_dir, info)
        tf.saved_model.save(module, tmp, signatures={
            name: getattr(module, name).get_concrete_function() for name in SIGNATURES})
        with open(os.path.join(tmp, "assets", MODEL_CONFIG_ASSET), "w") as f:
            json.dump(encoder.get_config(), f, indent=2, sort_keys=True)
        write_warmup_requests(tmp, warmup_requests(vocab_dir))
    return export_dir


def encoder_from_export(export_dir: str, seed: int = 0) -> CLUEEncoder:
    """A NEW, randomly initialised encoder with the exported one's architecture.

    This is the "untrained encoder" baseline of the evaluation: same preset,
    same vocabulary (``<export_dir>/assets``), no pre-training.
    """
    import keras

    with tf.io.gfile.GFile(os.path.join(export_dir, "assets", MODEL_CONFIG_ASSET)) as f:
        config = json.load(f)
    keras.utils.set_random_seed(seed)
    config.pop("name", None)
    encoder = CLUEEncoder.from_config(config)
    encoder.build(encoder.input_shape_for_build())
    return encoder
