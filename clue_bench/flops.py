"""FLOPs and positions of one forward pass of the encoder, as it computes them:
padded, bucketed by length, all slots (XLA) or packed (`clue bench train`'s
accounting; the scaling study keeps the paper's nominal count, `clue_scaling`)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from clue_keras.config import ModelConfig
from clue_keras.packed import CHUNK, rung


def _bucket_plan(ext: np.ndarray, max_len: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(widths, rows per bucket) of the encoder's bucketing of rows of these extents."""
    from clue_keras.buckets import bucket_ids, optimal_widths

    widths = optimal_widths(tf.constant(ext, tf.int32), max_len, k)
    ids = bucket_ids(tf.constant(ext, tf.int32), widths).numpy()[ext > 0]
    return widths.numpy(), np.bincount(ids, minlength=k)


def forward_flops(mc: ModelConfig, ids: np.ndarray, child_buckets: int = 0,
                  parent_buckets: int = 0, batch_size: Optional[int] = None,
                  static_shapes: bool = False, packed_child: bool = False) -> Dict[str, float]:
    """Multiply-adds x 2 of one forward pass over what the encoder computes, and its
    real and computed positions, averaged over the batches of ``batch_size`` rows
    of ``ids`` (default: one batch).

    Padded (0 buckets): the child runs on real items only, all L slots of each;
    the parent on all S slots of every (user, service). Bucketed: each bucket on
    its width (`clue_keras.buckets`), empty histories skipped. ``static_shapes``:
    the child also runs on the padding items (all S x L slots). ``packed_child``:
    the child runs on the batch's real tokens as one stream padded to its rung,
    each chunk of queries attending to a window of keys (`clue_keras.packed`).
    Keys: ``flops``; ``child_tokens_real`` (non-zero ids), ``child_tokens_computed``;
    ``parent_items_real``, ``parent_items_computed``; ``real_tokens`` and
    ``computed_tokens``, the sums of child and parent figures.
    """
    from clue_keras.buckets import extents

    d, ff = mc.hidden_dim, mc.intermediate_dim
    s, l = ids.shape[2], ids.shape[3]

    def block(seq_len, n_seqs):
        per_token = 2 * (4 * d * d + 2 * d * ff) + 2 * 2 * seq_len * d
        return n_seqs * seq_len * per_token

    def packed_side(tokens, max_len, layers):
        """(flops, positions computed) of the packed child over ``tokens`` real ones."""
        r = int(rung(tokens))
        window = CHUNK + 2 * (max_len - 1)
        per_token = 2 * (4 * d * d + 2 * d * ff) + 2 * 2 * window * d
        return layers * r * per_token, r

    def side(ext, max_len, k, layers, padded_rows):
        """(flops, positions computed) of one transformer over rows of extents ``ext``."""
        if not k:
            return layers * block(max_len, padded_rows), padded_rows * max_len
        widths, counts = _bucket_plan(ext, max_len, k)
        return (layers * sum(block(int(w), int(c)) for w, c in zip(widths, counts)),
                int((widths * counts).sum()))

    batch_size = batch_size or ids.shape[0]
    totals: Dict[str, float] = {}
    n = 0
    for start in range(0, ids.shape[0], batch_size):
        b = ids[start:start + batch_size]
        flat = b.reshape(-1, l)
        tok_ext = extents(tf.constant(flat != 0)).numpy()
        item_mask = (flat != 0).any(-1).reshape(-1, s)
        real_items = int(item_mask.sum())
        item_ext = extents(tf.constant(item_mask)).numpy()
        if packed_child:
            cf, cc = packed_side(int((flat != 0).sum()), l, mc.child_layers)
        else:
            cf, cc = side(tok_ext, l, child_buckets, mc.child_layers,
                          flat.shape[0] if static_shapes else real_items)
        pf, pc = side(item_ext, s, parent_buckets, mc.parent_layers, item_mask.shape[0])
        fig = {"flops": float(cf + pf), "child_tokens_real": int((flat != 0).sum()),
               "child_tokens_computed": cc, "parent_items_real": real_items,
               "parent_items_computed": pc}
        for key, v in fig.items():
            totals[key] = totals.get(key, 0) + v
        n += 1
    out = {key: v / n for key, v in totals.items()}
    out["real_tokens"] = out["child_tokens_real"] + out["parent_items_real"]
    out["computed_tokens"] = out["child_tokens_computed"] + out["parent_items_computed"]
    return out
