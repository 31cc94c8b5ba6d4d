"""Length buckets (clue_keras.buckets) and the bucketed encoder: exactly the padded
computation (item vectors, user embeddings, CLIP loss, gradients), fewer positions
computed; the training bench's data and padding figures."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from clue_bench.train import bench_data, forward_flops, synthetic_batch
from clue_keras.buckets import bucket_ids, bucketed_map, computed_positions, extents, optimal_widths
from clue_keras.config import PRESETS
from clue_keras.encoder import (DEFAULT_CHILD_BUCKETS, DEFAULT_PARENT_BUCKETS, CLUEEncoder,
                                 auto_buckets)
from clue_keras.pretrainer import CLUEPretrainer

MC = PRESETS["tiny"]                     # S = 8, L = 16


def brute_force_cost(ext, max_len, k):
    """Fewest positions any k non-decreasing widths (last = max extent) compute."""
    m = int(max(ext, default=0))
    best = None
    for combo in itertools.combinations_with_replacement(range(m + 1), k - 1):
        ws = sorted(combo) + [m]
        cost = sum(ws[int(np.searchsorted(ws, e))] for e in ext if e > 0)
        best = cost if best is None else min(best, cost)
    return best


def test_extents_count_to_the_last_real_position_holes_included():
    mask = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(extents(mask).numpy(), [2, 3, 0, 4, 4])


def test_optimal_widths_minimise_positions_computed():
    rng = np.random.default_rng(0)
    for _ in range(150):
        max_len, n, k = int(rng.integers(1, 12)), int(rng.integers(0, 25)), int(rng.integers(1, 5))
        ext = rng.integers(0, max_len + 1, n).astype(np.int32)
        widths = optimal_widths(tf.constant(ext), max_len, k).numpy()
        assert widths.shape == (k,) and np.all(np.diff(widths) >= 0)
        assert widths[-1] == (ext.max() if n else 0)
        assert computed_positions(ext, widths).numpy() == brute_force_cost(ext, max_len, k)
        # Every real row fits its bucket.
        ids = bucket_ids(tf.constant(ext), widths).numpy()
        assert np.all(widths[np.minimum(ids, k - 1)][ext > 0] >= ext[ext > 0])
        assert np.all(ids < k)


def test_optimal_widths_examples_and_errors():
    ext = tf.constant([0, 3, 3, 5, 8, 1, 16, 2])
    np.testing.assert_array_equal(optimal_widths(ext, 16, 1), [16])
    np.testing.assert_array_equal(optimal_widths(ext, 16, 3), [3, 8, 16])
    np.testing.assert_array_equal(optimal_widths(tf.zeros([0], tf.int32), 16, 2), [0, 0])
    with pytest.raises(ValueError, match="at least one bucket"):
        optimal_widths(ext, 16, 0)


def test_bucketed_map_runs_each_row_trimmed_and_restores_the_order():
    rows = np.array([[5, 0, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0], [7, 7, 0, 0], [0, 9, 0, 0]], np.int32)
    seen = []

    def fn(x):
        seen.append(int(x.shape[1]))
        return tf.stack([tf.reduce_sum(x, axis=1), tf.fill([tf.shape(x)[0]], x.shape[1])], 1)

    ext = extents(rows != 0)
    out = bucketed_map(fn, [tf.constant(rows)], ext, 4, 2, 2, tf.int32).numpy()
    np.testing.assert_array_equal(out[:, 0], rows.sum(1))           # nothing real cut off
    assert out[2].tolist() == [0, 0]                                 # all padding: zeros
    assert sorted(seen) == [2, 4] and out[1, 1] == 4 and out[0, 1] == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="longer than 3"):
        bucketed_map(fn, [tf.constant(rows)], ext, 3, 2, 2, tf.int32)


def skewed_ids(b=6, seed=1):
    ids = synthetic_batch(MC, b, seed=seed)
    ids[0, 2] = 0                                    # a user without service 2
    ids[1, 0, 2] = 0                                 # a padding item inside a history
    ids[1, 1, 0, 3] = 0                              # a padding token inside an item
    ids[2, 1, :, :] = 0
    ids[2, 1, :MC.max_items, :MC.max_tokens] = 7     # a full history of full items
    return ids


def same_length_ids():
    ids = np.zeros((3, 3, MC.max_items, MC.max_tokens), np.int32)
    ids[:, :, :3, :5] = 11                           # every item 5 ids, every history 3 items
    return ids


def encoder_pair(child, parent, dtype=None, mc=MC):
    padded = CLUEEncoder.from_config_dataclass(mc, dtype=dtype, child_buckets=0, parent_buckets=0)
    bucketed = CLUEEncoder.from_config_dataclass(mc, dtype=dtype, child_buckets=child,
                                                 parent_buckets=parent)
    padded.build()
    bucketed.build()
    bucketed.set_weights(padded.get_weights())
    return padded, bucketed


CASES = {
    "skewed": skewed_ids(),
    "one_user": synthetic_batch(MC, 1, seed=4),
    "all_in_one_bucket": same_length_ids(),
    "empty_buckets": synthetic_batch(MC, 2, seed=3),  # with K = 6 some buckets stay empty
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("child,parent", [(3, 3), (6, 6), (1, 0), (0, 2)])
def test_bucketed_encoder_equals_padded(case, child, parent):
    ids = CASES[case]
    padded, bucketed = encoder_pair(child, parent)
    h_pad = padded.item_embeddings(ids).numpy()
    h_buc = bucketed.item_embeddings(ids).numpy()
    np.testing.assert_allclose(h_buc, h_pad, atol=2e-5)
    np.testing.assert_array_equal(h_buc[~ids.any(-1)], 0.0)
    out_pad, out_buc = padded({"token_ids": ids}), bucketed({"token_ids": ids})
    np.testing.assert_array_equal(out_buc["service_mask"], out_pad["service_mask"])
    np.testing.assert_allclose(out_buc["user_embedding"], out_pad["user_embedding"], atol=2e-5)
    # In a graph too (what fit runs), with the dynamic widths.
    graph = tf.function(lambda x: bucketed({"token_ids": x})["user_embedding"])
    np.testing.assert_allclose(graph(ids), out_pad["user_embedding"], atol=2e-5)


def test_empty_buckets_case_really_leaves_buckets_empty():
    ext = extents(tf.reshape(tf.constant(CASES["empty_buckets"]) != 0, [-1, MC.max_tokens]))
    widths = optimal_widths(ext, MC.max_tokens, 6).numpy()
    assert len(set(widths)) < 6 or 0 in np.bincount(bucket_ids(ext, widths).numpy(), minlength=6)


def pretrainer_pair(child, parent, mc=MC):
    enc_pad, enc_buc = encoder_pair(child, parent, mc=mc)
    models = [CLUEPretrainer(e, projection_dim=mc.projection_dim) for e in (enc_pad, enc_buc)]
    for m in models:
        m.build(m.encoder.input_shape_for_build())
    models[1].set_weights(models[0].get_weights())
    return models


@pytest.mark.parametrize("case", ["skewed", "all_in_one_bucket"])
def test_bucketed_clip_loss_and_gradients_equal_padded(case):
    ids = CASES[case]
    padded, bucketed = pretrainer_pair(3, 3)
    results = []
    for model in (padded, bucketed):
        with tf.GradientTape() as tape:
            loss, pairs = model.compute_contrastive_loss({"token_ids": ids}, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((float(loss), float(pairs),
                        [tf.convert_to_tensor(g).numpy() for g in grads]))
    (l_pad, p_pad, g_pad), (l_buc, p_buc, g_buc) = results
    assert p_buc == p_pad > 0
    assert l_buc == pytest.approx(l_pad, rel=1e-5, abs=1e-6)
    for a, b in zip(g_buc, g_pad):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-3)


def test_bucketed_mixed_precision_close_to_padded_and_float32_outputs():
    ids = CASES["skewed"]
    padded, bucketed = encoder_pair(3, 3, dtype="mixed_bfloat16")
    out_pad, out_buc = padded({"token_ids": ids}), bucketed({"token_ids": ids})
    assert out_buc["user_embedding"].dtype == tf.float32
    np.testing.assert_allclose(out_buc["user_embedding"], out_pad["user_embedding"], atol=0.1)


def test_default_buckets_by_width_and_explicit_counts_win():
    tiny = CLUEEncoder.from_config_dataclass(MC)                                # width 32
    assert (tiny.child_buckets, tiny.parent_buckets) == (0, 0)
    wide = CLUEEncoder.from_config_dataclass(PRESETS["clue-4m"])                # width 192
    assert (wide.child_buckets, wide.parent_buckets) == (DEFAULT_CHILD_BUCKETS,
                                                         DEFAULT_PARENT_BUCKETS)
    assert wide.get_config()["child_buckets"] == DEFAULT_CHILD_BUCKETS        # saved resolved
    assert auto_buckets(32, 2, 5) == 2 and auto_buckets(512, 0, 5) == 0
    assert auto_buckets(32, None, 5) == 0 and auto_buckets(128, None, 5) == 5


def test_bucket_counts_are_config_and_checked():
    enc = CLUEEncoder.from_config_dataclass(MC, child_buckets=4, parent_buckets=0)
    cfg = enc.get_config()
    assert (cfg["child_buckets"], cfg["parent_buckets"]) == (4, 0)
    assert CLUEEncoder.from_config(cfg).get_config() == cfg
    old = {k: v for k, v in cfg.items() if k not in ("child_buckets", "parent_buckets")}
    CLUEEncoder.from_config(old)                 # configs saved before bucketing still load
    with pytest.raises(ValueError, match="bucket counts must be >= 0"):
        CLUEEncoder.from_config_dataclass(MC, child_buckets=-1)


# -- the bench's data and padding figures ---------------------------------------


def test_skewed_synthetic_batch_is_skewed_valid_and_deterministic():
    mc = PRESETS["clue-4m"]
    ids = synthetic_batch(mc, 64, seed=0)
    np.testing.assert_array_equal(ids, synthetic_batch(mc, 64, seed=0))
    assert ids.shape == (64, 3, mc.max_items, mc.max_tokens)
    assert ids.min() == 0 and ids.max() < mc.vocab_size
    assert (ids.any(axis=(2, 3)).sum(1) >= 2).all()          # pre-training users
    items = ids.any(-1)
    tokens = (ids != 0).sum(-1)[items]
    history = items.sum(-1)[items.any(-1)]
    # Many short, a few long: median well below the mean-of-range, tail up to the cap.
    assert 2 <= np.median(tokens) <= 0.4 * mc.max_tokens and tokens.max() >= 0.7 * mc.max_tokens
    assert np.median(history) <= 0.4 * mc.max_items and history.max() == mc.max_items
    # Left-aligned: no real item after a padding one, no token after padding.
    assert (extents(tf.constant(items.reshape(-1, mc.max_items))).numpy()
            == items.reshape(-1, mc.max_items).sum(-1)).all()
    with pytest.raises(ValueError, match="lengths"):
        synthetic_batch(mc, 2, lengths="normal")


def test_forward_flops_padding_shares_padded_vs_bucketed():
    ids = np.zeros((2, 3, 4, 8), np.int32)
    mc = MC.replace(max_items=4, max_tokens=8)
    ids[0, 0, 0, :2] = 5                       # item of 2 ids
    ids[0, 0, 1, :8] = 5                       # item of 8 ids
    ids[1, 1, 0, :2] = 5                       # item of 2 ids
    padded = forward_flops(mc, ids)
    assert padded["child_tokens_real"] == 12 and padded["child_tokens_computed"] == 3 * 8
    assert padded["parent_items_real"] == 3 and padded["parent_items_computed"] == 6 * 4
    bucketed = forward_flops(mc, ids, 2, 2)
    assert bucketed["child_tokens_computed"] == 12            # widths 2 and 8: no padding
    assert bucketed["parent_items_computed"] == 2 + 1          # histories of 2 and 1 items
    assert bucketed["flops"] < padded["flops"]
    assert bucketed["real_tokens"] == padded["real_tokens"] == 15
    # Averaged per batch.
    per_batch = forward_flops(mc, ids, 2, 2, batch_size=1)
    assert per_batch["child_tokens_real"] == 6 and per_batch["parent_items_real"] == 1.5


def test_bucketing_meets_the_padding_target_on_the_skewed_batch():
    mc = PRESETS["clue-4m"]
    ids = synthetic_batch(mc, 32, seed=0)
    padded = forward_flops(mc, ids)
    bucketed = forward_flops(mc, ids, 5, 5)
    assert 1 - padded["real_tokens"] / padded["computed_tokens"] > 0.5
    assert 1 - bucketed["real_tokens"] / bucketed["computed_tokens"] <= 0.15


def test_bench_reads_real_records(tmp_path):
    import pandas as pd

    from clue_keras.data.prepare import prepare_local

    rows = []
    for i in range(30):
        for j in range(i % 4 + 1):
            rows.append((f"u{i}", "shop", 10 + j, " ".join(["red shoes"] * (1 + (i * j) % 5))))
        rows.append((f"u{i}", "news", 5, f"weather {i % 3}"))
    out = str(tmp_path / "prepared")
    prepare_local(pd.DataFrame(rows, columns=["user_id", "service", "timestamp", "item_text"]),
                  out, max_items=4, max_tokens=8, vocab_size=300, eval_percent=0,
                  test_percent=0, shards=1)
    ids, mc = bench_data("tiny", 4, records=out, batches=3)
    assert ids.shape == (12, 2, 4, 8) and (mc.max_items, mc.max_tokens) == (4, 8)
    assert (ids.any(axis=(2, 3)).sum(1) == 2).all()           # users with both services
    f_pad, f_buc = forward_flops(mc, ids, batch_size=4), forward_flops(mc, ids, 3, 3, batch_size=4)
    assert f_buc["computed_tokens"] < f_pad["computed_tokens"]
    with pytest.raises(FileNotFoundError, match="Split-train"):
        bench_data("tiny", 4, records=str(tmp_path))

    from clue_bench.train import bench_train, records_dataset

    # A new reader with the same seed yields exactly the in-memory batches, in order:
    # the input-pipeline ratio compares the same data fed two ways.
    stream, _ = records_dataset(out, mc, 4, seed=0)
    np.testing.assert_array_equal(
        np.concatenate([b["token_ids"] for b in stream.take(3).as_numpy_iterator()]), ids)

    res = bench_train("tiny", steps=2, batch_size=4, precision="float32", records=out,
                      modes=("bucketed",), buckets=3, warmup=1)
    feed = res["input_pipeline"]
    assert feed["mode"] == "bucketed" and feed["in_memory_step_s"] == res["bucketed"]["step_time_s"]
    assert feed["ratio"] == pytest.approx(feed["streamed_step_s"] / feed["in_memory_step_s"])
    assert len(feed["streamed_rounds_s"]) == len(feed["in_memory_rounds_s"]) == feed["rounds"] == 1
    assert res["data"] == f"records {out}" and res["batches"] == 2


@pytest.mark.parametrize("argv, rc, message", [
    (["--workers", "2", "--records", "somewhere"], 2, "drop --records"),
    (["--steps", "1"], 2, "--steps >= 2"),
    (["--records", "/nonexistent/prepared", "--steps", "2"], 1, "Split-train"),
])
def test_cli_rejects_what_the_bench_cannot_run(argv, rc, message, capsys):
    from clue_cli.main import main as clue_main

    assert clue_main(["bench", "train", *argv]) == rc
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("child,parent", [(0, 0), (3, 0), (0, 2), (5, 5)])
def test_encoder_counts_the_positions_it_computes_as_the_bench_does(child, parent):
    """``CLUEEncoder.computed_positions`` (the training progress' padding share) counts
    what ``clue bench train``'s ``forward_flops`` counts, padded and bucketed."""
    mc = PRESETS["tiny"]
    ids = synthetic_batch(mc, 6, seed=4)
    encoder = CLUEEncoder.from_config_dataclass(mc, child_buckets=child, parent_buckets=parent)
    want = forward_flops(mc, ids, child, parent)["computed_tokens"]
    assert float(encoder.computed_positions(tf.constant(ids))) == want


def test_training_progress_reports_the_bucketed_padding_share():
    """The progress line's padding share counts what the bucketed encoder computes."""
    from clue_keras.config import TrainConfig
    from clue_keras.train import make_optimizer
    from clue_keras.train_progress import Progress, report_items

    mc = PRESETS["tiny"]
    ids = synthetic_batch(mc, 8, seed=2)
    encoder = CLUEEncoder.from_config_dataclass(mc, child_buckets=3, parent_buckets=3)
    model = CLUEPretrainer(encoder, projection_dim=mc.projection_dim)
    model.build(encoder.input_shape_for_build())
    model.compile(optimizer=make_optimizer(TrainConfig(batch_size=8, train_steps=10), "float32"),
                  jit_compile=False)
    report_items(model)
    progress = Progress(every=2, total=2, start=0, batch_positions=(8, 3 * mc.max_items,
                                                                    mc.max_tokens),
                        printer=lambda line: None)
    ds = tf.data.Dataset.from_tensors({"token_ids": ids}).repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, callbacks=[progress])
    figures = forward_flops(mc, ids, 3, 3)
    want = 1 - figures["real_tokens"] / figures["computed_tokens"]
    padded = forward_flops(mc, ids)
    assert progress.history[-1]["padding_share"] == pytest.approx(want, abs=1e-6)
    assert want < 1 - padded["real_tokens"] / padded["computed_tokens"] - 0.1
