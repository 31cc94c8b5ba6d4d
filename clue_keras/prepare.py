"""In-process (no Beam) equivalent of the pipeline's BehaviorPreprocess.

Built from the same :mod:`clue_keras.records` functions as the Beam component,
for small local runs, tests and benchmarks::

    behaviours -> clean per user (normalise, skip empty, dedup, newest S per service)
               -> drop users with fewer than ``min_items`` items
               -> split by user (md5 of the id) -> BPE trained on TRAIN items only
               -> tokenise -> out_dir/vocab/, out_dir/Split-{train,eval,test}/*.tfrecord.gz

Also the ``clue prepare`` command.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional, Sequence, Union

from clue_keras.records import SPLITS, clean_behaviors, is_active, split_of

REQUIRED_COLUMNS = ("user_id", "service", "timestamp", "item_text")
SHARD_GLOB = "part-*-of-*.tfrecord.gz"


def shard_name(index: int, shards: int) -> str:
    """File name of shard ``index`` of ``shards``: ``part-00000-of-00002.tfrecord.gz``."""
    return f"part-{index:05d}-of-{shards:05d}.tfrecord.gz"


def _load_behaviors(behaviors):
    import pandas as pd

    if isinstance(behaviors, str):
        from clue_keras.synth import read_behaviors

        source = behaviors
        df = read_behaviors(behaviors)
    elif isinstance(behaviors, pd.DataFrame):
        source, df = "behaviors DataFrame", behaviors
    else:
        raise TypeError(f"behaviors must be a DataFrame or a data directory, got "
                        f"{type(behaviors).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source} lacks column(s) {missing}; has {list(df.columns)}")
    if df["user_id"].isna().any() or df["service"].isna().any():
        col = "user_id" if df["user_id"].isna().any() else "service"
        raise ValueError(f"{source}: column {col!r} has missing values")
    try:
        timestamps = pd.to_numeric(df["timestamp"], errors="raise")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: column 'timestamp' is not numeric: {e}") from e
    if timestamps.isna().any():
        raise ValueError(f"{source}: column 'timestamp' has missing values")
    return pd.DataFrame({
        "user_id": df["user_id"].astype(str), "service": df["service"].astype(str),
        "timestamp": timestamps.astype("int64"),
        "item_text": df["item_text"].fillna("").astype(str)}), source


def _write_shards(examples: Sequence[bytes], split_dir: str, shards: int) -> List[str]:
    """Writes serialised examples round-robin into ``shards`` gzipped files, atomically."""
    import tensorflow as tf

    os.makedirs(split_dir, exist_ok=True)
    for old in glob.glob(os.path.join(split_dir, SHARD_GLOB)):
        os.remove(old)
    paths = []
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for i in range(shards):
        path = os.path.join(split_dir, shard_name(i, shards))
        tmp = os.path.join(split_dir, f".tmp-{os.getpid()}-{shard_name(i, shards)}")
        try:
            with tf.io.TFRecordWriter(tmp, options) as writer:
                for record in examples[i::shards]:
                    writer.write(record)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        paths.append(path)
    return paths


def prepare_local(behaviors: Union["pandas.DataFrame", str], out_dir: str,  # noqa: F821
                  max_items: int, max_tokens: int, vocab_size: int, min_items: int = 2,
                  eval_percent: int = 10, test_percent: int = 10, shards: int = 2,
                  services: Optional[Sequence[str]] = None,
                  min_frequency: int = 2) -> Dict[str, object]:
    """Preprocesses behaviour logs into per-user records, in this process.

    Args:
      behaviors: DataFrame with columns ``user_id``, ``service``, ``timestamp``
        (int unix seconds), ``item_text``; or a ``clue synth`` data directory.
      out_dir: gets ``vocab/`` and ``Split-{train,eval,test}/`` with ``shards``
        files each (possibly empty); earlier shards there are replaced, and
        ``stats.json``.
      max_items: S, newest items kept per (user, service).
      max_tokens: L, ids per item including the service token.
      vocab_size: requested BPE vocabulary size including special tokens.
      min_items: users with fewer items (after cleaning) are dropped.
      eval_percent, test_percent: share of users per held-out split.
      shards: files per split.
      services: pre-training services; default all services in the data.
        Rows of other services are dropped (``rows_other_service``).
      min_frequency: minimum pair count of a BPE merge.

    Returns:
      Stats: ``rows_read``, ``rows_other_service``, ``rows_empty_text``,
      ``rows_duplicate``, ``items_truncated``, ``users_read``,
      ``users_inactive``, ``services``, ``vocab_size``, and per split
      ``{"users", "items", "tokens"}`` under ``splits`` (tokens include the
      service token of each item).
    """
    from clue_keras.records import build_user_example
    from clue_keras.tokenizer import OfflineTokenizer, train_bpe, write_text_atomic

    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    df, source = _load_behaviors(behaviors)
    rows_read = len(df)
    services = sorted(set(services) if services is not None else set(df["service"]))
    if not services:
        raise ValueError(f"{source} has no rows")
    in_services = df["service"].isin(services)
    rows_other = int((~in_services).sum())
    df = df[in_services]

    users: Dict[str, Dict[str, object]] = {}
    counts = {"rows_empty_text": 0, "rows_duplicate": 0, "items_truncated": 0}
    n_users, n_inactive = 0, 0
    for user_id, group in df.groupby("user_id", sort=True):
        n_users += 1
        cleaned = clean_behaviors(
            zip(group["service"], group["timestamp"], group["item_text"]), max_items)
        counts["rows_empty_text"] += cleaned.n_empty
        counts["rows_duplicate"] += cleaned.n_duplicates
        counts["items_truncated"] += cleaned.n_truncated
        if not is_active(cleaned.n_items, min_items):
            n_inactive += 1
            continue
        users[user_id] = {"split": split_of(user_id, eval_percent, test_percent),
                          "items": cleaned.items}

    train_texts = [t for u in users.values() if u["split"] == "train"
                   for texts in u["items"].values() for t in texts]
    if not train_texts:
        raise ValueError(
            f"{source}: no train users left ({len(users)} active users of {n_users}); "
            f"lower min_items={min_items} or eval/test percent, or add data")
    vocab_dir = os.path.join(out_dir, "vocab")
    info = train_bpe(train_texts, services, vocab_size, vocab_dir, max_items=max_items,
                     max_tokens=max_tokens, min_frequency=min_frequency)
    tokenizer = OfflineTokenizer(vocab_dir)

    # Tokenise per service in one batch each, then build the examples.
    ids: Dict[str, Dict[str, List[List[int]]]] = {u: {} for u in users}
    for service in services:
        owners = [(u, len(d["items"].get(service, []))) for u, d in users.items()]
        texts = [t for d in users.values() for t in d["items"].get(service, [])]
        encoded = tokenizer.encode_items(texts, service) if texts else []
        start = 0
        for u, n in owners:
            if n:
                ids[u][service] = encoded[start:start + n]
                start += n

    split_stats = {s: {"users": 0, "items": 0, "tokens": 0} for s in SPLITS}
    per_split: Dict[str, List[bytes]] = {s: [] for s in SPLITS}
    for user_id in sorted(users):
        split = users[user_id]["split"]
        example = build_user_example(user_id, ids[user_id], services)
        per_split[split].append(example.SerializeToString())
        st = split_stats[split]
        st["users"] += 1
        st["items"] += sum(len(v) for v in ids[user_id].values())
        st["tokens"] += sum(len(item) for v in ids[user_id].values() for item in v)
    for split in SPLITS:
        _write_shards(per_split[split], os.path.join(out_dir, f"Split-{split}"), shards)

    stats = {"source": source, "rows_read": rows_read, "rows_other_service": rows_other,
             **counts, "users_read": n_users, "users_inactive": n_inactive,
             "services": services, "vocab_size": info.vocab_size, "splits": split_stats}
    write_text_atomic(os.path.join(out_dir, "stats.json"),
                      json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _run(args) -> int:
    stats = prepare_local(args.behaviors, args.out, max_items=args.max_items,
                          max_tokens=args.max_tokens, vocab_size=args.vocab_size,
                          min_items=args.min_items, eval_percent=args.eval_percent,
                          test_percent=args.test_percent, shards=args.shards)
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


def add_parser(subparsers) -> None:
    """``clue prepare``: behaviour logs -> vocab + per-user TFRecords, without Beam."""
    p = subparsers.add_parser(
        "prepare", help="preprocess behaviour logs into per-user TFRecords (no Beam)",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--behaviors", required=True,
                   help="data directory written by `clue synth` (behaviors/ inside)")
    p.add_argument("--out", required=True, help="output directory (vocab/, Split-*/)")
    p.add_argument("--max-items", type=int, default=8, help="S: items per (user, service)")
    p.add_argument("--max-tokens", type=int, default=16, help="L: ids per item")
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    p.add_argument("--min-items", type=int, default=2, help="drop users with fewer items")
    p.add_argument("--eval-percent", type=int, default=10)
    p.add_argument("--test-percent", type=int, default=10)
    p.add_argument("--shards", type=int, default=2, help="files per split")
    p.set_defaults(func=_run)
