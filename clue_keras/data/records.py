"""Per-user record building, shared by the Beam BehaviorPreprocess and the local path.

Pure Python: TensorFlow is imported only inside the functions that build or
parse ``tf.train.Example`` protos, so Beam workers can import this cheaply.

Cleaning one user's behaviour rows (paper section 3.1), in this order:

1. normalise ``item_text`` (:func:`normalize_text`) and cap it at
   ``max_text_bytes`` UTF-8 bytes (:func:`clue_keras.tokenizer.clean_item_text`,
   exactly what the tokenizers do; counted in ``CleanedUser.n_capped``); rows
   whose text is empty after normalisation are **skipped** (they carry nothing
   to tokenise) and counted in ``CleanedUser.n_empty``;
2. sort by ``(timestamp, service, text)`` so the result does not depend on the
   input row order;
3. drop exact repeats of the same ``(service, normalised text)``, keeping the
   earliest occurrence (a repeated behaviour counts once);
4. per service keep the newest ``max_items`` (S) items, in chronological order
   (oldest first).

Record layout (docs/ARCHITECTURE.md): ``user_id`` bytes [1], and per service
``tokens/<service>`` int64 [sum of item lengths] and ``lengths/<service>``
int64 [n_items]; a user without a service has both lists empty.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

from clue_keras.text import DEFAULT_MAX_TEXT_BYTES, cap_text_bytes, normalize_text

USER_ID_KEY = "user_id"
SPLITS = ("train", "eval", "test")

# (service, timestamp, text) of one behaviour row of a user.
Row = Tuple[str, int, str]

__all__ = [
    "USER_ID_KEY", "SPLITS", "CleanedUser", "normalize_text", "tokens_key", "lengths_key",
    "dedup_user_service", "keep_newest", "clean_behaviors", "split_of", "is_active",
    "build_user_example", "parse_user_example",
]


def tokens_key(service: str) -> str:
    """Feature name of a service's flat token ids: ``tokens/<service>``."""
    return f"tokens/{service}"


def lengths_key(service: str) -> str:
    """Feature name of a service's per-item token counts: ``lengths/<service>``."""
    return f"lengths/{service}"


@dataclasses.dataclass
class CleanedUser:
    """One user's behaviours after :func:`clean_behaviors`.

    Attributes:
      items: service -> normalised item texts, oldest first, at most S; only
        services with at least one item appear.
      n_rows: rows given.
      n_empty: rows skipped because their text was empty after normalisation.
      n_duplicates: rows dropped as repeats of an earlier (service, text).
      n_truncated: items dropped because a service had more than S.
      n_capped: rows whose text was cut at ``max_text_bytes``.
    """

    items: Dict[str, List[str]]
    n_rows: int = 0
    n_empty: int = 0
    n_duplicates: int = 0
    n_truncated: int = 0
    n_capped: int = 0

    @property
    def n_items(self) -> int:
        """Items kept over all services."""
        return sum(len(v) for v in self.items.values())


def dedup_user_service(items: Iterable[Row]) -> List[Row]:
    """Sorts one user's ``(service, timestamp, text)`` rows and drops repeats.

    Rows are sorted by ``(timestamp, service, text)``; a row whose
    ``(service, text)`` already occurred is dropped, so the earliest
    occurrence stays. Texts are compared as given (normalise them first).
    """
    seen = set()
    out = []
    for service, ts, text in sorted(items, key=lambda r: (r[1], r[0], r[2])):
        if (service, text) in seen:
            continue
        seen.add((service, text))
        out.append((service, ts, text))
    return out


def keep_newest(texts: Sequence[str], max_items: int) -> List[str]:
    """The last ``max_items`` of a chronological list (still oldest first)."""
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    return list(texts[-max_items:])


def clean_behaviors(rows: Iterable[Row], max_items: int,
                    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> CleanedUser:
    """Cleans one user's ``(service, timestamp, text)`` rows; see the module docstring.

    ``max_text_bytes``: the cap of each normalised text in UTF-8 bytes (0: none).
    """
    rows = list(rows)
    normalized, n_capped = [], 0
    for service, ts, text in rows:
        norm = normalize_text(text)
        capped = cap_text_bytes(norm, max_text_bytes)
        n_capped += capped != norm
        normalized.append((str(service), int(ts), capped))
    non_empty = [r for r in normalized if r[2]]
    deduped = dedup_user_service(non_empty)
    per_service: Dict[str, List[str]] = {}
    for service, _, text in deduped:
        per_service.setdefault(service, []).append(text)
    items = {s: keep_newest(v, max_items) for s, v in sorted(per_service.items())}
    return CleanedUser(
        items=items, n_rows=len(rows), n_empty=len(normalized) - len(non_empty),
        n_duplicates=len(non_empty) - len(deduped),
        n_truncated=len(deduped) - sum(len(v) for v in items.values()), n_capped=n_capped)


def split_of(user_id: str, eval_percent: int, test_percent: int) -> str:
    """``"train"``, ``"eval"`` or ``"test"`` for a user, from the MD5 of its id.

    The bucket ``md5(user_id) mod 100`` depends on the id alone, so a user's
    split is the same in every process and run, and adding users never moves
    existing ones. Buckets ``[0, test)`` are test, ``[test, test+eval)`` eval.
    """
    if eval_percent < 0 or test_percent < 0 or eval_percent + test_percent > 100:
        raise ValueError(f"need 0 <= eval_percent, test_percent and a sum <= 100, got "
                         f"{eval_percent}, {test_percent}")
    digest = hashlib.md5(str(user_id).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + eval_percent:
        return "eval"
    return "train"


def is_active(n_items_total: int, min_items: int) -> bool:
    """A user is kept when it has at least ``min_items`` items after cleaning."""
    return n_items_total >= min_items


def build_user_example(user_id: str, service_items: Mapping[str, Sequence[Sequence[int]]],
                       services: Sequence[str]):
    """One user's ``tf.train.Example``.

    Args:
      user_id: the user key.
      service_items: service -> items (oldest first), each item a list of
        1..L token ids (service token first). Services not present are empty.
      services: all services of the vocabulary; every one gets both features.

    Raises:
      ValueError: a service in ``service_items`` is not in ``services``, or an
        item is empty.
    """
    import tensorflow as tf

    unknown = sorted(set(service_items) - set(services))
    if unknown:
        raise ValueError(f"user {user_id!r}: service(s) {unknown} not in {list(services)}")
    example = tf.train.Example()
    feature = example.features.feature  # filled in place: no copies of the id lists
    feature[USER_ID_KEY].bytes_list.value.append(str(user_id).encode("utf-8"))
    for service in services:
        items = service_items.get(service, [])
        tokens = feature[tokens_key(service)].int64_list
        lengths = feature[lengths_key(service)].int64_list
        tokens.SetInParent()  # present even when empty
        lengths.SetInParent()
        for i, item in enumerate(items):
            if len(item) == 0:
                raise ValueError(f"user {user_id!r}, service {service!r}: item {i} is empty")
            tokens.value.extend(item)
        lengths.value.extend([len(item) for item in items])
    return example


def parse_user_example(example, services: Sequence[str]) -> Tuple[str, Dict[str, List[List[int]]]]:
    """Inverse of :func:`build_user_example`.

    Args:
      example: a ``tf.train.Example`` or its serialised bytes.
      services: the services to read.

    Returns:
      ``(user_id, {service: [item ids, ...]})`` with every service present
      (empty list when the user has none).

    Raises:
      ValueError: a feature is missing, or lengths do not sum to the tokens.
    """
    import tensorflow as tf

    if isinstance(example, (bytes, bytearray)):
        example = tf.train.Example.FromString(bytes(example))
    features = example.features.feature
    if USER_ID_KEY not in features:
        raise ValueError(f"example lacks feature {USER_ID_KEY!r}")
    user_id = features[USER_ID_KEY].bytes_list.value[0].decode("utf-8")
    out: Dict[str, List[List[int]]] = {}
    for service in services:
        for key in (tokens_key(service), lengths_key(service)):
            if key not in features:
                raise ValueError(f"example of user {user_id!r} lacks feature {key!r}")
        tokens = list(features[tokens_key(service)].int64_list.value)
        lengths = list(features[lengths_key(service)].int64_list.value)
        if sum(lengths) != len(tokens):
            raise ValueError(f"user {user_id!r}, service {service!r}: lengths sum to "
                             f"{sum(lengths)} but there are {len(tokens)} tokens")
        items, start = [], 0
        for n in lengths:
            items.append(tokens[start:start + n])
            start += n
        out[service] = items
    return user_id, out
