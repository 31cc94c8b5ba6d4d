"""Byte-level BPE for item texts: training, an offline fast path and an in-graph path.

An item becomes ``L = max_tokens`` int ids (paper section 2.1)::

    [service_token] + bpe(normalize_text(text))[: L - 1]   right-padded with 0 (<pad>)

Two implementations produce these ids and must agree id for id:

* :class:`OfflineTokenizer` — HuggingFace ``tokenizers`` (Rust), used by the
  Beam preprocessing and :mod:`clue_keras.prepare`: fast, pure Python API, no
  TensorFlow.
* :class:`InGraphTokenizer` — a ``tf.Module`` around keras-hub's
  ``BytePairTokenizer``, used inside the exported serving signatures. Its saved
  graph uses core TF ops plus ``RegexSplitWithOffsets`` only, which the old TF
  Text linked into stock TF Serving provides (see :data:`ALLOWED_TFTEXT_OPS`,
  :func:`graph_op_names`).

How agreement is obtained
-------------------------
``tokenizers``' ``ByteLevel`` pre-tokeniser uses the GPT-2 split regex (with a
``\\s+(?!\\S)`` look-ahead); keras-hub emulates that regex in RE2, which has no
look-ahead and whose ``\\s`` is ASCII only, and keras-hub uses U+096C as an
internal marker. A fuzz test over random Unicode text found three classes of
input where the two disagree, so before BPE both paths apply the same
*BPE preparation* (:func:`prepare_for_bpe` / :func:`prepare_for_bpe_tf`) to
the already normalised text:

1. every non-ASCII Unicode ``White_Space`` character (:data:`UNICODE_SPACES`:
   NBSP, U+2000..U+200A, U+3000, ...) becomes an ASCII space (not collapsed);
2. U+096C DEVANAGARI DIGIT SIX becomes ASCII ``6`` (keras-hub's split marker;
   it would otherwise vanish);
3. NUL characters are removed (TF Text's regex split stops at a NUL);
4. a non-empty text gets one leading ASCII space, so that the first word of an
   item is tokenised like every other word (``add_prefix_space`` semantics,
   done here rather than by either library because keras-hub's flag also
   prefixes the empty string and ``tokenizers``' does not).

Both libraries then run with ``add_prefix_space=False``. With this, the tests
compare both paths on a few hundred texts (Korean, accents, emoji,
punctuation, digits, repeated and exotic spaces, empty strings) and find them
equal; BPE training sees the same prepared text. This preparation is part of
``bpe(...)`` and is *not* text normalisation: :func:`normalize_text` stays
exactly as docs/ARCHITECTURE.md states.

Vocabulary artifact (``vocab_dir``): ``vocab.json``, ``merges.txt`` and
``clue_vocab.json`` (:class:`VocabInfo`), special tokens first: ``<pad>`` = 0,
``<unk>`` = 1, ``<item>`` = 2, then ``<svc:NAME>`` for the sorted services.
Special tokens are never produced by BPE from text: they are only ever
prepended as ids, so a literal ``"<item>"`` inside an item text is ordinary
text for both paths.

A Python process that *loads* such a SavedModel must register the TF Text op
first: call :func:`register_text_ops` (``import tensorflow_text``) before
``tf.saved_model.load``; TF Serving links it already.

TensorFlow and keras-hub are imported lazily (``InGraphTokenizer`` is built on
first access), so this module is cheap to import in Beam workers and the CLI.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import tempfile
from typing import Iterable, Iterator, List, Optional, Sequence, Set

from clue_keras.atomic import write_text_atomic  # noqa: F401  (re-exported)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<item>")
PAD_ID = 0
ITEM_TOKEN = "<item>"

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
INFO_FILE = "clue_vocab.json"

# TF Text ops the serving graph may contain: stock TF Serving links TF Text 2.12.
ALLOWED_TFTEXT_OPS = frozenset({"RegexSplitWithOffsets"})

# Normalisation (docs/ARCHITECTURE.md): ASCII whitespace runs -> one space, strip.
_WS_PATTERN = r"[ \t\n\r\f\v]+"
_WS_RE = re.compile(_WS_PATTERN)

# Non-ASCII characters with the Unicode White_Space property.
UNICODE_SPACES = ("\x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
                  + "\u2028\u2029\u202f\u205f\u3000")
_DEVANAGARI_SIX = "\u096c"
_PREPARE_TABLE = {ord(c): " " for c in UNICODE_SPACES}
_PREPARE_TABLE[ord(_DEVANAGARI_SIX)] = "6"
_PREPARE_TABLE[0] = None
# RE2 versions of the same table, for the graph.
_UNICODE_SPACES_RE2 = (r"[\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
                       r"\x{202f}\x{205f}\x{3000}]")


def service_token(name: str) -> str:
    """The special token of pre-training service ``name``: ``"<svc:NAME>"``."""
    return f"<svc:{name}>"


def normalize_text(s: str) -> str:
    """Collapses runs of ``[ \\t\\n\\r\\f\\v]`` to one space and strips both ends.

    Nothing else (no case folding, no Unicode normalisation); byte-for-byte
    equal to :func:`normalize_text_tf`.
    """
    return _WS_RE.sub(" ", s).strip(" ")


def normalize_text_tf(t):
    """Graph version of :func:`normalize_text`: tf.string of any shape -> same shape."""
    import tensorflow as tf

    t = tf.strings.regex_replace(t, _WS_PATTERN, " ")
    return tf.strings.regex_replace(t, r"^ | $", "")


def prepare_for_bpe(normalized: str) -> str:
    """BPE preparation of a *normalised* text (see module docstring)."""
    if not normalized:
        return ""
    return " " + normalized.translate(_PREPARE_TABLE)


def prepare_for_bpe_tf(normalized):
    """Graph version of :func:`prepare_for_bpe`: tf.string of any shape -> same shape."""
    import tensorflow as tf

    t = tf.strings.regex_replace(normalized, _UNICODE_SPACES_RE2, " ")
    t = tf.strings.regex_replace(t, _DEVANAGARI_SIX, "6")
    t = tf.strings.regex_replace(t, r"\x00", "")
    return tf.where(tf.equal(normalized, ""), normalized, tf.strings.join([" ", t]))


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
    """

    services: tuple
    max_items: int
    max_tokens: int
    vocab_size: int
    special_tokens: dict

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
        if self.max_items < 1 or self.max_tokens < 2:
            raise ValueError(f"need max_items >= 1 and max_tokens >= 2, got "
                             f"{self.max_items}, {self.max_tokens}")

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
                   special_tokens={k: int(v) for k, v in d["special_tokens"].items()})


# ----------------------------------------------------------------------------- file helpers


def _is_remote(path: str) -> bool:
    return "://" in path


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
              max_items: int, max_tokens: int, min_frequency: int = 2) -> VocabInfo:
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
    prepared: Iterator[str] = (prepare_for_bpe(n) for n in map(normalize_text, texts) if n)
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
                     special_tokens={s: i for i, s in enumerate(specials)})
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
    """Pure-Python (Rust ``tokenizers``) item tokenizer for preprocessing.

    ``encode_item(text, service)`` -> list of 1..L ids (no padding), equal to
    the unpadded prefix of :class:`InGraphTokenizer`'s row for the same input.
    """

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
        """Ids of one item: ``[service token] + bpe(normalize(text))[:L-1]``, unpadded.

        ``service=None`` uses ``<item>`` (items of services unseen in pre-training).
        """
        return self.encode_items([text], service)[0]

    def encode_items(self, texts: Sequence[str], service: Optional[str]) -> List[List[int]]:
        """Batched :meth:`encode_item` for items of one service (``encode_batch``)."""
        sid = self._service_id(service)
        return [[sid] + ids[: self._max_bpe] for ids in self.bpe(texts)]

    def bpe(self, texts: Sequence[str]) -> List[List[int]]:
        """``bpe(normalize(text))`` for each text: untruncated ids, no service token."""
        prepared = [prepare_for_bpe(normalize_text(t)) for t in texts]
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
        to ``self``), so ``InGraphTokenizer(d).tokenize_users(x)`` works.
        keras-hub keeps a ``MutableHashTable`` cache of word -> merges that
        grows with the distinct words a serving process sees.
        """

        def __init__(self, vocab_dir: str, name: str = "clue_in_graph_tokenizer"):
            super().__init__(name=name)
            self.info = load_vocab_info(vocab_dir)
            vocab, merges = _load_vocab_and_merges(vocab_dir)
            self.bpe = keras_hub.tokenizers.BytePairTokenizer(
                vocabulary=vocab, merges=merges, sequence_length=None,
                add_prefix_space=False, dtype="int32")
            self.max_tokens = int(self.info.max_tokens)
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
            ragged = self.bpe.tokenize(prepare_for_bpe_tf(normalized))     # [N, (tokens)]
            ragged = tf.cast(ragged[:, : self.max_tokens - 1], tf.int32)
            ids = tf.concat([tf.expand_dims(service_ids, 1), ragged], axis=1)
            return ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_tokens])

        def _tokenize_items(self, texts, service_ids):
            """texts: string [N]; service_ids: int32 [N] token ids -> int32 [N, L].

            Row n is ``[service_ids[n]] + bpe(normalize(texts[n]))[:L-1]``, 0-padded.
            """
            return self._ids(normalize_text_tf(texts), service_ids)

        def _tokenize_users(self, item_texts):
            """item_texts: string [B, P, S] -> int32 [B, P, S, L].

            Slot ``p`` gets the p-th service's token. An item that is "" after
            normalisation is padding: its row is all zeros.
            """
            shape = tf.shape(item_texts)
            tf.debugging.assert_equal(
                shape[1], self.num_services,
                message=f"item_texts must have P={self.num_services} services on axis 1")
            normalized = normalize_text_tf(tf.reshape(item_texts, [-1]))
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
