"""keras-hub ``BytePairTokenizer.tokenize`` with a bounded word cache, for serving graphs.

keras-hub's ``tokenize`` caches word -> merges in a ``MutableHashTable`` (its
``BytePairTokenizerCache``) and never evicts: a long-running server (``clue
serve`` or TF Serving running the same SavedModel) grows by ~50-80 bytes for
every distinct word it ever sees. :func:`bounded_bpe_tokenize` uses the same
table but holds at most ``cache_words`` words: when a batch's new words would
overflow it, the table is emptied first (``LookupTableExportV2`` +
``LookupTableRemoveV2``, core ops that stock TF Serving has), then they are
inserted.

The ids equal keras-hub's ``tokenize``, also when concurrent requests empty the
table: the merges of a batch's new words are used directly, never read back
from the table (keras-hub inserts, then looks up again).
"""

from __future__ import annotations

from typing import Optional

#: Most distinct words the in-graph BPE cache holds (~8 MB in a serving process).
DEFAULT_BPE_CACHE_WORDS = 100_000


def bounded_bpe_tokenize(bpe, texts, cache_words: Optional[int]):
    """``bpe.tokenize(texts)`` (string [N] -> ragged int ids) with at most ``cache_words``
    words cached; None: keras-hub's own unbounded cache; 0: no caching."""
    import tensorflow as tf

    if cache_words is None:
        return bpe.tokenize(texts)
    if cache_words < 0:
        raise ValueError(f"cache_words must be >= 0 or None, got {cache_words}")
    from keras_hub.src.tokenizers.byte_pair_tokenizer import split_strings_for_bpe

    cache = bpe.cache
    with tf.device("cpu"):
        raw = split_strings_for_bpe(texts, bpe.unsplittable_tokens)   # [N, (words)]
        cached = cache.lookup(raw.flat_values)                         # "" = not cached
        unseen = tf.equal(cached, "") & tf.not_equal(raw.flat_values, "")

        def merge_unseen():
            words, index = tf.unique(tf.boolean_mask(raw.flat_values, unseen))
            merged = tf.strings.reduce_join(
                bpe._bpe_merge(bpe._transform_bytes(words)), axis=1, separator=" ")
            if cache_words:
                _insert_bounded(cache, words, merged, cache_words)
            return tf.tensor_scatter_nd_update(cached, tf.where(unseen), tf.gather(merged, index))

        merged = tf.cond(tf.reduce_any(unseen), merge_unseen, lambda: cached)
        tokens = bpe.token_to_id_map.lookup(tf.strings.split(merged, sep=" "))
        return tf.RaggedTensor.from_row_splits(
            tokens.flat_values, tf.gather(tokens.row_splits, raw.row_splits))


def _insert_bounded(cache, words, merged, limit: int) -> None:
    """Inserts (at most ``limit`` of) ``words`` -> ``merged``, emptying the table first
    if it would hold more than ``limit`` words."""
    import tensorflow as tf

    table = cache.id2value
    n = tf.minimum(tf.size(words, out_type=tf.int64), limit)

    def empty():
        with tf.control_dependencies([table.remove(table.export()[0])]):
            return tf.constant(True)

    full = tf.cond(table.size() + n > limit, empty, lambda: tf.constant(False))
    with tf.control_dependencies([full]):
        cache.insert(words[:n], merged[:n])
