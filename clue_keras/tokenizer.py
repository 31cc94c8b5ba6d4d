"""Byte-level BPE for item texts: training, an offline fast path and an in-graph path.

An item becomes ``L = max_tokens`` int ids (paper section 2.1)::

    [service_token] + bpe(clean_item_text(text))[: L - 1]   right-padded with 0 (<pad>)

``clean_item_text`` (`clue_keras.text`): normalisation, then a cap at ``max_text_bytes``
UTF-8 bytes (``clue_vocab.json``), so a 1 MB text costs what a 2 kB one does. Two
implementations produce these ids and must agree id for id:

* :class:`OfflineTokenizer` — HuggingFace ``tokenizers`` (Rust), used by the Beam
  preprocessing and :mod:`clue_keras.data.prepare`: fast, no TensorFlow.
* :class:`InGraphTokenizer` — a ``tf.Module`` around keras-hub's ``BytePairTokenizer``,
  inside the exported serving signatures. Its saved graph uses core TF ops plus
  ``RegexSplitWithOffsets`` only, which the old TF Text linked into stock TF Serving
  provides (:data:`ALLOWED_TFTEXT_OPS`, :func:`graph_op_names`).

They agree because both apply the same *BPE preparation* (`clue_keras.text.prepare_for_bpe`,
explained there) to the cleaned text, then run with ``add_prefix_space=False``.

Vocabulary artifact (``vocab_dir``): ``vocab.json``, ``merges.txt`` and ``clue_vocab.json``
(:class:`VocabInfo`), special tokens first: ``<pad>`` = 0, ``<unk>`` = 1, ``<item>`` = 2,
then ``<svc:NAME>`` for the sorted services. Special tokens are only ever prepended as
ids, never produced by BPE, so a literal ``"<item>"`` in a text is ordinary text.

A process that *loads* such a SavedModel must first register the TF Text op:
:func:`register_text_ops` before ``tf.saved_model.load`` (TF Serving links it already).
TensorFlow and keras-hub are imported lazily (``InGraphTokenizer`` is built on first
access), so this module is cheap to import in Beam workers and the CLI.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
from typing import Iterable, Iterator, List, Optional, Sequence, Set

from clue_keras.atomic import write_text_atomic
from clue_keras.bpe_cache import DEFAULT_BPE_CACHE_WORDS, bounded_bpe_tokenize
from clue_keras.uri import is_remote as _is_remote
from clue_keras.text import (DEFAULT_MAX_TEXT_BYTES, cap_text_bytes_tf, clean_item_text,
                             normalize_text, normalize_text_tf,  # noqa: F401  (T.normalize_text)
                             prepare_for_bpe, prepare_for_bpe_tf)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<item>")
PAD_ID = 0
ITEM_TOKEN = "<item>"

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
INFO_FILE = "clue_vocab.json"

# TF Text ops the serving graph may contain: stock TF Serving links TF Text 2.12.
ALLOWED_TFTEXT_OPS = frozenset({"RegexSplitWithOffsets"})


def service_token(name: str) -> str:
    """The special token of pre-training service ``name``: ``"<svc:NAME>"``."""
    return f"<svc:{name}>"


# ----------------------------------------------------------------------------- vocab info


@dataclasses.dataclass(frozen=True)
class VocabInfo:
    """Contents of ``clue_vocab.json``: the services and shapes the ids were built for.

    Attributes:
      services: pre-training services, sorted; their order is the P axis.
      max_items: S, items kept per (user, service).
      max_tokens: L, ids per item including the service token.
      vocab_size: V, number of ids (all ids are in ``[0, V)``).
      special_tokens: token -> id for ``<pad>``, ``<unk>``, ``<item>`` and
        every ``<svc:NAME>``.
      max_text_bytes: item texts are cut to this many UTF-8 bytes before BPE
        (0: no cap); :data:`DEFAULT_MAX_TEXT_BYTES` when the file lacks it.
    """

    services: tuple
    max_items: int
    max_tokens: int
    vocab_size: int
    special_tokens: dict
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES

    def __post_init__(self):
        object.__setattr__(self, "services", tuple(self.services))
        if list(self.services) != sorted(set(self.services)):
            raise ValueError(f"services must be sorted and unique, got {list(self.services)}")
        for i, tok in enumerate(SPECIAL_TOKENS):
            if self.special_tokens.get(tok) != i:
                raise ValueError(f"special token {tok!r} must have id {i}, "
                                 f"got {self.special_tokens.get(tok)!r}")
        for s in self.services:
            if service_token(s) not in self.special_tokens:
                raise ValueError(f"special_tokens lacks {service_token(s)!r}")
        if self.max_items < 1 or self.max_tokens < 2 or 0 < self.max_text_bytes < 4:
            raise ValueError(f"need max_items >= 1, max_tokens >= 2 and max_text_bytes 0 (no cap)"
                             f" or >= 4, got {self.max_items}, {self.max_tokens}, "
                             f"{self.max_text_bytes}")

    def service_index(self, name: str) -> int:
        """Position of service ``name`` on the P axis; ValueError if unknown."""
        try:
            return self.services.index(name)
        except ValueError:
            raise ValueError(f"unknown service {name!r}; known services: "
                             f"{list(self.services)}") from None

    def service_token_id(self, name: Optional[str]) -> int:
        """Id of ``<svc:name>``, or of ``<item>`` when ``name`` is None."""
        if name is None:
            return self.special_tokens[ITEM_TOKEN]
        self.service_index(name)
        return self.special_tokens[service_token(name)]

    @property
    def service_token_ids(self) -> List[int]:
        """Ids of the service tokens in P order."""
        return [self.special_tokens[service_token(s)] for s in self.services]

    def to_json(self) -> str:
        return json.dumps({
            "services": list(self.services), "max_items": self.max_items,
            "max_tokens": self.max_tokens, "vocab_size": self.vocab_size,
            "max_text_bytes": self.max_text_bytes,
            "special_tokens": self.special_tokens}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "clue_vocab.json") -> "VocabInfo":
        d = json.loads(text)
        keys = ("services", "max_items", "max_tokens", "vocab_size", "special_tokens")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"{source} lacks key(s) {missing}")
        return cls(services=tuple(d["services"]), max_items=int(d["max_items"]),
                   max_tokens=int(d["max_tokens"]), vocab_size=int(d["vocab_size"]),
                   special_tokens={k: int(v) for k, v in d["special_tokens"].items()},
                   max_text_bytes=int(d.get("max_text_bytes", DEFAULT_MAX_TEXT_BYTES)))


# ----------------------------------------------------------------------------- file helpers



def _read_text(path: str) -> str:
    if _is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_vocab_info(vocab_dir: str) -> VocabInfo:
    """Reads ``vocab_dir/clue_vocab.json``."""
    path = os.path.join(vocab_dir, INFO_FILE)
    try:
        text = _read_text(path)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"no vocabulary info at {path}: {e}") from e
    return VocabInfo.from_json(text, source=path)


def _load_vocab_and_merges(vocab_dir: str):
    vocab = json.loads(_read_text(os.path.join(vocab_dir, VOCAB_FILE)))
    merges = [line for line in _read_text(os.path.join(vocab_dir, MERGES_FILE)).split("\n")
              if line and not line.startswith("#version")]
    return vocab, merges


# ----------------------------------------------------------------------------- training


def train_bpe(texts: Iterable[str], services: Sequence[str], vocab_size: int, out_dir: str,
              max_items: int, max_tokens: int, min_frequency: int = 2,
              max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> VocabInfo:
    """Trains a byte-level BPE on ``texts`` and writes the vocab artifact to ``out_dir``.

    Args:
      texts: raw item texts (normalised and prepared here); empty ones are skipped.
      services: pre-training service names (sorted here).
      vocab_size: requested number of ids including the special tokens; at
        least 256 (the byte alphabet) + number of special tokens. The trained
        vocabulary can be smaller when the text has too few pairs to merge;
        ``VocabInfo.vocab_size`` is the real size.
      out_dir: created if missing; ``vocab.json`` and ``merges.txt`` then
        ``clue_vocab.json`` (last, so its presence marks a complete artifact)
        are written atomically.
      max_items, max_tokens: S and L recorded in ``clue_vocab.json``.
      min_frequency: minimum pair count for a merge.
      max_text_bytes: the text cap, applied to the texts, recorded in ``clue_vocab.json``.

    Returns:
      The written :class:`VocabInfo`.
    """
    from tokenizers import ByteLevelBPETokenizer

    services = sorted(set(services))
    if not services:
        raise ValueError("train_bpe needs at least one service")
    specials = list(SPECIAL_TOKENS) + [service_token(s) for s in services]
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size={vocab_size} is below the 256-byte alphabet plus "
                         f"{len(specials)} special tokens ({256 + len(specials)})")
    cleaned = (clean_item_text(t, max_text_bytes) for t in texts)
    prepared: Iterator[str] = (prepare_for_bpe(n) for n in cleaned if n)
    first = next(prepared, None)
    if first is None:
        raise ValueError("train_bpe got no non-empty training text (after normalisation)")
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(itertools.chain([first], prepared), vocab_size=vocab_size,
                            min_frequency=min_frequency, special_tokens=specials,
                            show_progress=False)
    vocab = tok.get_vocab()
    for i, s in enumerate(specials):
        if vocab.get(s) != i:   # guaranteed by tokenizers; checked because ids are a contract
            raise RuntimeError(f"tokenizers gave special token {s!r} id {vocab.get(s)}, not {i}")
    info = VocabInfo(services=tuple(services), max_items=int(max_items),
                     max_tokens=int(max_tokens), vocab_size=len(vocab),
                     special_tokens={s: i for i, s in enumerate(specials)},
                     max_text_bytes=int(max_text_bytes))
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_model(tmp)
        with open(os.path.join(tmp, VOCAB_FILE), encoding="utf-8") as f:
            vocab_text = f.read()
        with open(os.path.join(tmp, MERGES_FILE), encoding="utf-8") as f:
            merges_text = f.read()
    if not _is_remote(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, VOCAB_FILE), vocab_text)
    write_text_atomic(os.path.join(out_dir, MERGES_FILE), merges_text)
    write_text_atomic(os.path.join(out_dir, INFO_FILE), info.to_json())
    return info


# ----------------------------------------------------------------------------- offline path


class OfflineTokenizer:
    """Pure-Python (Rust ``tokenizers``) item tokenizer for preprocessing: ``encode_item(text,
    service)`` -> 1..L ids, the unpadded prefix of :class:`InGraphTokenizer`'s row."""

    def __init__(self, vocab_dir: str):
        from tokenizers import Tokenizer, models, pre_tokenizers

        self.vocab_dir = vocab_dir
        self.info = load_vocab_info(vocab_dir)
        vocab, merges = _load_vocab_and_merges(vocab_dir)
        bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
        self._tok = Tokenizer(bpe)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                           use_regex=True)
        self._max_bpe = self.info.max_tokens - 1

    def _service_id(self, service: Optional[str]) -> int:
        return self.info.service_token_id(service)

    def encode_item(self, text: str, service: Optional[str]) -> List[int]:
        """Ids of one item: ``[service token] + bpe(clean_item_text(text))[:L-1]``, unpadded.

        ``service=None`` uses ``<item>`` (items of services unseen in pre-training).
        """
        return self.encode_items([text], service)[0]

    def encode_items(self, texts: Sequence[str], service: Optional[str]) -> List[List[int]]:
        """Batched :meth:`encode_item` for items of one service (``encode_batch``)."""
        sid = self._service_id(service)
        return [[sid] + ids[: self._max_bpe] for ids in self.bpe(texts)]

    def bpe(self, texts: Sequence[str]) -> List[List[int]]:
        """``bpe(clean_item_text(text))`` for each text: untruncated ids, no service token."""
        prepared = [prepare_for_bpe(clean_item_text(t, self.info.max_text_bytes)) for t in texts]
        return [e.ids for e in self._tok.encode_batch(prepared, add_special_tokens=False)]


# ----------------------------------------------------------------------------- graph path


def graph_op_names(saved_model_dir: str) -> Set[str]:
    """Names of all ops in a SavedModel: its graphs and every library function."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    ops: Set[str] = set()
    for mg in sm.meta_graphs:
        ops.update(n.op for n in mg.graph_def.node)
        for fn in mg.graph_def.library.function:
            ops.update(n.op for n in fn.node_def)
    return ops


def non_core_ops(op_names: Iterable[str]) -> Set[str]:
    """The ops among ``op_names`` that are not core TensorFlow ops (not in ``tf.raw_ops``)."""
    import tensorflow as tf

    return {op for op in op_names if not hasattr(tf.raw_ops, op)}


def register_text_ops() -> None:
    """Registers TF Text ops (``RegexSplitWithOffsets``) so a saved tokenizer graph loads."""
    import tensorflow_text  # noqa: F401  (import registers the ops)


def _make_in_graph_tokenizer_class():
    import keras_hub
    import tensorflow as tf

    class InGraphTokenizer(tf.Module):
        """In-graph item tokenizer (keras-hub ``BytePairTokenizer``), saveable.

        ``tokenize_items`` (also ``__call__``) and ``tokenize_users`` are
        ``tf.function``s with input signatures, usable from an exported
        module's own ``tf.function``s and saved with the module. They are made
        per instance (not decorated methods, which hold only a weak reference
        to ``self``), so ``InGraphTokenizer(d).tokenize_users(x)`` works. Its BPE
        word cache holds at most ``cache_words`` words (:mod:`clue_keras.bpe_cache`).
        """

        def __init__(self, vocab_dir: str, name: str = "clue_in_graph_tokenizer",
                     cache_words: Optional[int] = DEFAULT_BPE_CACHE_WORDS):
            super().__init__(name=name)
            self.cache_words = cache_words
            self.info = load_vocab_info(vocab_dir)
            vocab, merges = _load_vocab_and_merges(vocab_dir)
            self.bpe = keras_hub.tokenizers.BytePairTokenizer(
                vocabulary=vocab, merges=merges, sequence_length=None,
                add_prefix_space=False, dtype="int32")
            self.max_tokens, self.max_text_bytes = self.info.max_tokens, self.info.max_text_bytes
            self.num_services = len(self.info.services)
            self.service_ids = tf.constant(self.info.service_token_ids, tf.int32)
            self.tokenize_items = tf.function(
                self._tokenize_items,
                input_signature=[tf.TensorSpec([None], tf.string, name="texts"),
                                 tf.TensorSpec([None], tf.int32, name="service_ids")])
            self.tokenize_users = tf.function(
                self._tokenize_users,
                input_signature=[tf.TensorSpec([None, None, None], tf.string,
                                               name="item_texts")])

        def __call__(self, texts, service_ids):
            """Same as ``tokenize_items``."""
            return self.tokenize_items(texts, service_ids)

        def _ids(self, normalized, service_ids):
            """normalized: string [N]; service_ids int32 [N] -> int32 [N, L]."""
            ragged = bounded_bpe_tokenize(self.bpe, prepare_for_bpe_tf(normalized), self.cache_words)
            ragged = tf.cast(ragged[:, : self.max_tokens - 1], tf.int32)
            ids = tf.concat([tf.expand_dims(service_ids, 1), ragged], axis=1)
            return ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_tokens])

        def _tokenize_items(self, texts, service_ids):
            """texts: string [N]; service_ids: int32 [N] token ids -> int32 [N, L].

            Row n is ``[service_ids[n]] + bpe(clean_item_text(texts[n]))[:L-1]``, 0-padded.
            """
            return self._ids(self._clean(texts), service_ids)

        def _clean(self, texts):  # graph clean_item_text: normalise, cap at max_text_bytes
            return cap_text_bytes_tf(normalize_text_tf(texts), self.max_text_bytes)

        def _tokenize_users(self, item_texts):
            """item_texts: string [B, P, S] -> int32 [B, P, S, L].

            Slot ``p`` gets the p-th service's token. An item that is "" after
            normalisation is padding: its row is all zeros.
            """
            shape = tf.shape(item_texts)
            tf.debugging.assert_equal(
                shape[1], self.num_services,
                message=f"item_texts must have P={self.num_services} services on axis 1")
            normalized = self._clean(tf.reshape(item_texts, [-1]))
            svc = tf.tile(self.service_ids[None, :, None], [shape[0], 1, shape[2]])
            ids = self._ids(normalized, tf.reshape(svc, [-1]))
            ids = ids * tf.cast(tf.not_equal(normalized, ""), tf.int32)[:, None]
            out = tf.reshape(ids, tf.concat([shape, [self.max_tokens]], axis=0))
            out.set_shape([None, self.num_services, None, self.max_tokens])
            return out

    return InGraphTokenizer


_LAZY = {}


def __getattr__(name):  # PEP 562: build the tf.Module subclass on first use.
    if name == "InGraphTokenizer":
        if name not in _LAZY:
            _LAZY[name] = _make_in_graph_tokenizer_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
