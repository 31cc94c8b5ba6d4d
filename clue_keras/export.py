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

Tokenisation runs in the graph with the training BPE; the graph uses only core
TF ops plus ``RegexSplitWithOffsets`` (stock TF Serving's old TF Text).
The directory is written under a temporary name and renamed into place, with
``saved_model.pb`` present only once everything else is.
"""

from __future__ import annotations

import json
import os
from typing import Union

import tensorflow as tf

from clue_keras.atomic import atomic_dir
from clue_keras.encoder import CLUEEncoder
from clue_keras.pretrainer import CLUEPretrainer

SIGNATURES = ("serving_default", "embed_tokens", "embed_items", "retrieve")
VOCAB_FILES = ("vocab.json", "merges.txt", "clue_vocab.json")
MODEL_CONFIG_ASSET = "clue_model.json"


def _l2(x, axis=-1):
    return x / tf.maximum(tf.norm(x, axis=axis, keepdims=True), 1e-12)


class CLUEServingModule(tf.Module):
    """tf.Module holding the encoder, the in-graph tokenizer and the vocab asset."""

    def __init__(self, encoder: CLUEEncoder, vocab_dir: str):
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


def export_saved_model(model: Union[CLUEPretrainer, CLUEEncoder], vocab_dir: str,
                       export_dir: str) -> str:
    """Writes the serving SavedModel to ``export_dir`` atomically; returns the path.

    ``export_dir`` must not exist or be an empty directory (TFX pre-creates it).
    """
    encoder = model.encoder if isinstance(model, CLUEPretrainer) else model
    export_dir = os.path.abspath(export_dir)
    with atomic_dir(export_dir, prefix=".tmp-export-") as tmp:
        module = CLUEServingModule(encoder, vocab_dir)
        tf.saved_model.save(module, tmp, signatures={
            name: getattr(module, name).get_concrete_function() for name in SIGNATURES})
        with open(os.path.join(tmp, "assets", MODEL_CONFIG_ASSET), "w") as f:
            json.dump(encoder.get_config(), f, indent=2, sort_keys=True)
    return export_dir


def encoder_from_export(export_dir: str, seed: int = 0) -> CLUEEncoder:
    """A NEW, randomly initialised encoder with the exported one's architecture.

    This is the "untrained encoder" baseline of the evaluation: same preset,
    same vocabulary (``<export_dir>/assets``), no pre-training.
    """
    import keras

    with open(os.path.join(export_dir, "assets", MODEL_CONFIG_ASSET)) as f:
        config = json.load(f)
    keras.utils.set_random_seed(seed)
    config.pop("name", None)
    encoder = CLUEEncoder.from_config(config)
    encoder.build(encoder.input_shape_for_build())
    return encoder
