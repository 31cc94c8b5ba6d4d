"""Item text before BPE: normalisation, the byte cap and the BPE preparation.

Each step has a Python version (preprocessing, `clue_keras.tokenizer.OfflineTokenizer`)
and a graph version (`clue_keras.tokenizer.InGraphTokenizer`, the serving
signatures) that agree byte for byte (tests/test_tokenizer.py):

* :func:`normalize_text` / :func:`normalize_text_tf` (docs/ARCHITECTURE.md):
  runs of ``[ \\t\\n\\r\\f\\v]`` -> one space, both ends stripped;
* :func:`cap_text_bytes` / :func:`cap_text_bytes_tf`: the normalised text cut to
  ``max_text_bytes`` UTF-8 bytes at a character boundary (``clue_vocab.json``,
  default :data:`DEFAULT_MAX_TEXT_BYTES`), so a 1 MB text costs what a 2 kB one
  does; :func:`clean_item_text` is both steps;
* :func:`prepare_for_bpe` / :func:`prepare_for_bpe_tf`: the BPE preparation that
  makes ``tokenizers`` and keras-hub agree (see `clue_keras.tokenizer`).

BPE preparation
---------------
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

TensorFlow is imported inside the graph versions only.
"""

from __future__ import annotations

import re

#: Item texts are cut to this many UTF-8 bytes before BPE, unless ``clue_vocab.json``
#: says otherwise (also the value for artifacts written before the cap existed:
#: only the first L-1 tokens are kept, so a cap this far beyond them changes no id).
DEFAULT_MAX_TEXT_BYTES = 2000

# Normalisation (docs/ARCHITECTURE.md): ASCII whitespace runs -> one space, strip.
#: The whitespace runs normalize_text collapses (Python, RE2 and pandas alike).
WS_PATTERN = r"[ \t\n\r\f\v]+"
_WS_RE = re.compile(WS_PATTERN)

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


def normalize_text(s: str) -> str:
    """Collapses runs of ``[ \\t\\n\\r\\f\\v]`` to one space and strips both ends.

    Nothing else (no case folding, no Unicode normalisation); byte-for-byte
    equal to :func:`normalize_text_tf`.
    """
    return _WS_RE.sub(" ", s).strip(" ")


def normalize_text_tf(t):
    """Graph version of :func:`normalize_text`: tf.string of any shape -> same shape."""
    import tensorflow as tf

    t = tf.strings.regex_replace(t, WS_PATTERN, " ")
    return tf.strings.regex_replace(t, r"^ | $", "")


def cap_text_bytes(normalized: str, max_bytes: int) -> str:
    """A *normalised* text cut to at most ``max_bytes`` UTF-8 bytes (0: no cap), at a
    character boundary (a character the cut splits is dropped), then a trailing
    space dropped. Byte-for-byte equal to :func:`cap_text_bytes_tf`."""
    if not max_bytes:
        return normalized
    raw = normalized.encode("utf-8")
    if len(raw) <= max_bytes:
        return normalized
    return raw[:max_bytes].decode("utf-8", errors="ignore").rstrip(" ")


def cap_text_bytes_tf(normalized, max_bytes: int):
    """Graph version of :func:`cap_text_bytes`: tf.string of any shape -> same shape.

    ``substr`` in bytes, then ``unicode_transcode`` with ``errors="ignore"`` drops
    the partial character the cut left (and any other invalid UTF-8 a client
    sent), then one trailing space is removed. Core TF ops only.
    """
    import tensorflow as tf

    if not max_bytes:
        return normalized
    t = tf.strings.substr(normalized, 0, int(max_bytes), unit="BYTE")
    t = tf.strings.unicode_transcode(t, "UTF-8", "UTF-8", errors="ignore")
    return tf.strings.regex_replace(t, " $", "")


def clean_item_text(text: str, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> str:
    """:func:`normalize_text` then :func:`cap_text_bytes`: the text BPE sees (before
    :func:`prepare_for_bpe`)."""
    return cap_text_bytes(normalize_text(text), max_bytes)


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
