"""The CLUE encoder: child transformer over item tokens, parent over items.

Paper section 2.1, eqs. (1)-(3):
    h_i = MEAN(T_c(E_i)),   H = [h_1 | ... | h_S],   z = MEAN(T_p(H)).
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf
from keras import ops

from clue_keras.buckets import bucketed_map, computed_positions, extents, optimal_widths
from clue_keras.config import ModelConfig
from clue_keras.masked_mean import MaskedMean
from clue_keras.packed import packed_items, packed_stack, rung
from clue_keras.transformer_layer import TransformerLayer


#: Length buckets of the child / parent transformer, and the narrowest model they
#: are on for by default (``None`` = auto: K for ``hidden_dim >= BUCKETS_MIN_HIDDEN``,
#: else 0 = padded). Measured on a 2-core CPU (docs/PERFORMANCE.md): steady-state
#: steps are 2.3x faster bucketed for clue-4m (width 192) and 1.5x for tiny (width
#: 32), but the bucketed graph holds K copies of each transformer, so each trace
#: (first step, held-out loss, every export signature) costs more: the default
#: tiny `clue run` (200-400 steps of 50 ms) took a minute LONGER bucketed (Trainer
#: 87 s vs 58 s, EmbeddingExport 56 s vs 34 s). Wide models, whose steps take
#: seconds, earn the tracing back within a few dozen steps.
DEFAULT_CHILD_BUCKETS = 5
DEFAULT_PARENT_BUCKETS = 5
BUCKETS_MIN_HIDDEN = 128


def auto_buckets(hidden_dim: int, buckets: Optional[int], default: int) -> int:
    """``buckets`` if given, else ``default`` for models at least BUCKETS_MIN_HIDDEN wide, else 0."""
    if buckets is not None:
        return int(buckets)
    return default if hidden_dim >= BUCKETS_MIN_HIDDEN else 0


@keras.saving.register_keras_serializable(package="clue")
class CLUEEncoder(keras.Model):
    """Dict-in / dict-out user encoder. Knows nothing of the loss.

    Inputs: ``{"token_ids": int32 [B, P, S, L]}`` -- P services, S items per
    service (oldest first, all-zero rows are padding items), L tokens per item
    whose first token is the service token; 0 is padding.

    Outputs:
      ``user_embedding``: float32 [B, P, D] with D = ``output_dim or hidden_dim``;
          zeros where the user has no item in a service. Not normalised.
      ``service_mask``: bool [B, P], true where the user has >= 1 item.

    Only non-padding items go through the child transformer (they are gathered
    first and scattered back), so an [S, L] block that is mostly padding costs
    only its real items.

    ``child_buckets`` = K > 0: the real items are grouped into at most K buckets
    by token length, and each bucket runs trimmed to its width
    (`clue_keras.buckets`); 0: every real item runs on all L tokens; None:
    :func:`auto_buckets` (K = 5 for models at least 128 wide, else 0).
    ``parent_buckets`` likewise groups the non-empty (user, service) histories
    by number of items before the parent transformer; 0: every history runs on
    all S items. The results equal the padded computation within float
    tolerance (tests/test_packing.py); bucketing happens inside a batch, so which
    users meet in a batch does not change.
    ``static_shapes``: the child runs on every item slot, padding items included
    (their vectors are zeroed), so no shape depends on the data and a training
    step compiles under XLA (``jit_compile=True``); without it the gather of real
    items has a data-dependent size that XLA rejects. On CPU it is slower than
    the default (docs/PERFORMANCE.md, "XLA"); needs no buckets.
    ``packed_child``: in training steps (``training=True``) the child runs on
    all real tokens of the batch as one stream, compiled by XLA per length rung
    (`clue_keras.packed`); inference and export keep ``child_buckets``.
    """

    def __init__(
        self,
        vocab_size: int,
        max_items: int,
        max_tokens: int,
        hidden_dim: int,
        child_layers: int,
        parent_layers: int,
        num_heads: int,
        intermediate_dim: int,
        output_dim: Optional[int] = None,
        dropout: float = 0.0,
        child_buckets: Optional[int] = None,
        parent_buckets: Optional[int] = None,
        static_shapes: bool = False,
        packed_child: bool = False,
        dtype=None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        self.vocab_size = vocab_size
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.hidden_dim = hidden_dim
        self.child_layers = child_layers
        self.parent_layers = parent_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.output_dim = output_dim
        self.dropout = dropout
        child_buckets = auto_buckets(hidden_dim, child_buckets, DEFAULT_CHILD_BUCKETS)
        parent_buckets = auto_buckets(hidden_dim, parent_buckets, DEFAULT_PARENT_BUCKETS)
        if child_buckets < 0 or parent_buckets < 0:
            raise ValueError(f"bucket counts must be >= 0 (0: padded), got "
                             f"child_buckets={child_buckets}, parent_buckets={parent_buckets}")
        self.child_buckets = int(child_buckets)
        self.parent_buckets = int(parent_buckets)
        if static_shapes and (self.child_buckets or self.parent_buckets):
            raise ValueError("static_shapes=True runs every slot padded: it needs "
                             "child_buckets=0 and parent_buckets=0")
        self.static_shapes = bool(static_shapes)
        if packed_child and static_shapes:
            raise ValueError("packed_child=True and static_shapes=True are two ways to "
                             "compile the child under XLA: choose one")
        self.packed_child = bool(packed_child)

        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(
            vocab_size, hidden_dim, dtype=policy, name="token_embedding"
        )
        self.token_position = keras.layers.Embedding(
            max_tokens, hidden_dim, dtype=policy, name="token_position_embedding"
        )
        self.item_position = keras.layers.Embedding(
            max_items, hidden_dim, dtype=policy, name="item_position_embedding"
        )
        self.child = [
            TransformerLayer(intermediate_dim, num_heads, dropout=dropout, activation="gelu",
                             dtype=policy, name=f"child_{i}")
            for i in range(child_layers)
        ]
        self.parent = [
            TransformerLayer(intermediate_dim, num_heads, dropout=dropout, activation="gelu",
                             dtype=policy, name=f"parent_{i}")
            for i in range(parent_layers)
        ]
        self.pool = MaskedMean(dtype=policy, name="masked_mean")
        self.output_layer = (
            keras.layers.Dense(output_dim, dtype=policy, name="output_dim") if output_dim else None
        )

    @classmethod
    def from_config_dataclass(cls, cfg: ModelConfig, dtype=None, **kwargs) -> "CLUEEncoder":
        """``kwargs``: constructor arguments ModelConfig lacks (``child_buckets``,
        ``parent_buckets``)."""
        return cls(
            vocab_size=cfg.vocab_size, max_items=cfg.max_items, max_tokens=cfg.max_tokens,
            hidden_dim=cfg.hidden_dim, child_layers=cfg.child_layers,
            parent_layers=cfg.parent_layers, num_heads=cfg.num_heads,
            intermediate_dim=cfg.intermediate_dim, output_dim=cfg.output_dim,
            dropout=cfg.dropout, dtype=dtype, **kwargs,
        )

    @property
    def embedding_dim(self) -> int:
        return self.output_dim or self.hidden_dim

    def input_shape_for_build(self):
        """[B, P, S, L] with B and P free: what build() records for SavedModel tracing."""
        return (None, None, self.max_items, self.max_tokens)

    def build(self, input_shape=None):
        d = self.hidden_dim
        self.token_embedding.build((None, self.max_tokens))
        self.token_position.build((self.max_tokens,))
        self.item_position.build((self.max_items,))
        for layer in self.child:
            layer.build((None, self.max_tokens, d))
        for layer in self.parent:
            layer.build((None, self.max_items, d))
        if self.output_layer is not None:
            self.output_layer.build((None, d))
        self.built = True

    def get_build_config(self):
        return {"built": True}

    def build_from_config(self, config):
        self.build(self.input_shape_for_build())

    def encode_items(self, token_ids, training=False):
        """Item vectors h_i (eq. 1).

        token_ids: int32 [N, L]; an all-zero row is a padding item.
        Returns float [N, hidden_dim] (compute dtype); zeros for padding items.
        """
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        token_mask = ops.not_equal(token_ids, 0)
        x = self.token_embedding(token_ids)
        positions = ops.arange(ops.shape(token_ids)[-1], dtype="int32")
        x = x + self.token_position(positions)[None]
        for layer in self.child:
            x = layer(x, padding_mask=token_mask, training=training)
        return self.pool(x, token_mask)

    def item_embeddings(self, token_ids, training=False):
        """Item vectors h_i of every slot: float [B, P, S, hidden_dim] (compute dtype),
        zeros for padding items; what the parent transformer reads."""
        token_ids = ops.cast(token_ids, "int32")
        shape = ops.shape(token_ids)
        flat = ops.reshape(token_ids, (-1, shape[3]))
        h = self._items(flat, ops.any(ops.not_equal(flat, 0), axis=-1), training)
        return ops.reshape(h, (shape[0], shape[1], shape[2], self.hidden_dim))

    def call(self, inputs, training=False):
        token_ids = inputs["token_ids"] if isinstance(inputs, dict) else inputs
        token_ids = ops.cast(token_ids, "int32")
        # A clear error instead of a gather failure deep inside (or, on GPU, silent zeros).
        tf.debugging.assert_less(
            token_ids, self.vocab_size,
            message=f"token id >= vocab_size ({self.vocab_size}): the records were "
                    "tokenised with a different vocabulary than this model's")
        tf.debugging.assert_non_negative(token_ids, message="negative token id")
        shape = ops.shape(token_ids)
        b, p, s, l = shape[0], shape[1], shape[2], shape[3]
        flat = ops.reshape(token_ids, (-1, l))                      # [B*P*S, L]
        item_mask_flat = ops.any(ops.not_equal(flat, 0), axis=-1)  # [B*P*S]
        h = self._items(flat, item_mask_flat, training)             # [B*P*S, D]
        h = ops.reshape(h, (-1, s, self.hidden_dim))               # [B*P, S, D]
        item_mask = ops.reshape(item_mask_flat, (-1, s))           # [B*P, S]
        z = self._histories(h, item_mask, training)                # [B*P, D]
        service_mask = ops.any(item_mask, axis=-1)
        if self.output_layer is not None:
            z = self.output_layer(z)
        z = ops.cast(z, "float32") * ops.cast(service_mask, "float32")[:, None]
        return {
            "user_embedding": ops.reshape(z, (b, p, self.embedding_dim)),
            "service_mask": ops.reshape(service_mask, (b, p)),
        }

    def computed_positions(self, token_ids):
        """float32 scalar: the positions the child and parent transformers compute for
        ``token_ids`` [B, P, S, L] (padded: L per real item and S per (user, service);
        bucketed: each row at its bucket's width, empty histories skipped; a packed
        child: the rung of its training stream). Real
        positions are the non-zero ids plus the real items; the rest is padding."""
        ids = ops.cast(token_ids, "int32")
        flat = ops.reshape(ids, (-1, self.max_tokens))
        token_mask = ops.not_equal(flat, 0)
        item_mask = ops.any(token_mask, axis=-1)

        def side(mask, rows_mask, width, k):
            if not k:
                return tf.reduce_sum(tf.cast(rows_mask, tf.int64)) * width
            ext = extents(mask)
            return computed_positions(ext, optimal_widths(ext, width, k))

        rows = tf.ones_like(item_mask) if self.static_shapes else item_mask
        if self.packed_child:  # what a training step computes: the stream's rung
            child = tf.cast(rung(tf.reduce_sum(tf.cast(token_mask, tf.int32))), tf.int64)
        else:
            child = side(token_mask, rows, self.max_tokens, self.child_buckets)
        histories = ops.reshape(item_mask, (-1, self.max_items))
        parent = side(histories, tf.ones_like(histories[:, 0]), self.max_items,
                      self.parent_buckets)
        return tf.cast(child + parent, tf.float32)

    def _items(self, flat, item_mask_flat, training):
        """Item vectors [B*P*S, D] (zeros for padding items): the child transformer on
        real items only, padded to L or bucketed by length, scattered back."""
        if self.packed_child and training is True:
            return packed_items(
                lambda ids, pos: self.token_embedding(ids) + self.token_position(pos),
                packed_stack(self, self.child, self.max_tokens), self.compute_dtype,
                flat, self.max_tokens, training)
        if self.static_shapes:  # every slot, so that no shape depends on the data (XLA)
            h = self.encode_items(flat, training=training)
            return h * ops.cast(item_mask_flat, h.dtype)[:, None]
        if self.child_buckets:
            return bucketed_map(lambda ids: self.encode_items(ids, training=training),
                                [flat], extents(ops.not_equal(flat, 0)), self.max_tokens,
                                self.child_buckets, self.hidden_dim, self.compute_dtype)
        real = tf.where(item_mask_flat)[:, 0]                      # [N_real]
        h_real = self.encode_items(tf.gather(flat, real), training=training)
        return tf.scatter_nd(real[:, None], h_real,
                             ops.cast(ops.stack([ops.shape(flat)[0], self.hidden_dim]), "int64"))

    def _parent(self, h, item_mask, training):
        """Pooled parent output [n, D] of item vectors h [n, T, D] (T <= S)."""
        x = h + self.item_position(ops.arange(ops.shape(h)[1], dtype="int32"))[None]
        for layer in self.parent:
            x = layer(x, padding_mask=item_mask, training=training)
        return self.pool(x, item_mask)

    def _histories(self, h, item_mask, training):
        """Per (user, service) vectors [B*P, D] before the output layer (zeros for an
        empty service): the parent on all S items of every row, or bucketed."""
        if self.parent_buckets:
            return bucketed_map(lambda x, m: self._parent(x, m, training),
                                [h, item_mask], extents(item_mask), self.max_items,
                                self.parent_buckets, self.hidden_dim, self.compute_dtype)
        return self._parent(h, item_mask, training)

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
        }
        config.update(
            vocab_size=self.vocab_size, max_items=self.max_items,
            max_tokens=self.max_tokens, hidden_dim=self.hidden_dim,
            child_layers=self.child_layers, parent_layers=self.parent_layers,
            num_heads=self.num_heads, intermediate_dim=self.intermediate_dim,
            output_dim=self.output_dim, dropout=self.dropout,
            child_buckets=self.child_buckets, parent_buckets=self.parent_buckets,
            static_shapes=self.static_shapes, packed_child=self.packed_child,
        )
        return config
