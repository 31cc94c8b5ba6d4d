"""Training and scoring one run of a grid: records (cached per S, L, V), training
(resuming from its checkpoints), held-out loss at a fixed batch size, and the
downstream evaluation. `execute_run` is `clue_scaling.study.run_grid`'s default executor."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, Tuple

from clue_keras.atomic import write_json_atomic
from clue_keras.config import ModelConfig
from clue_scaling.grid import HELDOUT_SPLITS, RunSpec
from clue_scaling.store import records_dir


def ensure_records(data_dir: str, out_dir: str, mc: ModelConfig,
                   printer: Callable[[str], None] = print) -> str:
    """Prepares (once) the records for the model's S, L and vocabulary size; returns the dir.

    ``stats.json`` is written last by :func:`clue_keras.data.prepare.prepare_local`, so its
    presence marks a complete cache entry.
    """
    from clue_keras.data.prepare import prepare_local

    path = records_dir(out_dir, mc.max_items, mc.max_tokens, mc.vocab_size)
    if not os.path.exists(os.path.join(path, "stats.json")):
        printer(f"preparing records S={mc.max_items} L={mc.max_tokens} V={mc.vocab_size} "
                f"into {path}")
        prepare_local(data_dir, path, max_items=mc.max_items, max_tokens=mc.max_tokens,
                      vocab_size=mc.vocab_size)
    return path


def heldout_loss(pretrainer, records: str, batch_size: int) -> Tuple[float, int]:
    """Contrastive loss on the held-out users at a fixed batch size.

    Mean over all (user, A, B) terms of the full batches of ``batch_size``
    users from the ``eval`` and ``test`` splits (file order, no shuffling).

    Returns:
      (loss, users scored).
    """
    from clue_keras.data.input import make_dataset
    from clue_keras.tokenizer import load_vocab_info

    info = load_vocab_info(os.path.join(records, "vocab"))
    files = [os.path.join(records, f"Split-{s}", "*") for s in HELDOUT_SPLITS]
    ds = make_dataset(files, info, batch_size, shuffle=False, repeat=False, drop_remainder=True)
    total, terms, users = 0.0, 0.0, 0
    for batch in ds:
        loss, pairs = pretrainer.compute_contrastive_loss({"token_ids": batch["token_ids"]})
        total += float(loss) * float(pairs)
        terms += float(pairs)
        users += int(batch["token_ids"].shape[0])
    if not users:
        raise ValueError(f"fewer held-out users in {records} than heldout_batch_size="
                         f"{batch_size}; lower heldout_batch_size or add users")
    return total / max(terms, 1.0), users


def execute_run(spec: RunSpec, data_dir: str, rdir: str,
                printer: Callable[[str], None] = print) -> Dict[str, Any]:
    """Trains one run (resuming from its checkpoints), scores held-out loss, exports the
    SavedModel and evaluates downstream. Each stage's output is reused if complete."""
    import keras

    from clue_keras.train import load_pretrainer, train

    out_dir = os.path.dirname(os.path.dirname(rdir))
    seconds: Dict[str, float] = {}
    t0 = time.time()
    records = ensure_records(data_dir, out_dir, spec.model_config, printer)
    seconds["records"], t0 = time.time() - t0, time.time()
    vocab_dir = os.path.join(records, "vocab")
    model_dir = os.path.join(rdir, "model")
    done = os.path.join(model_dir, "train_result.json")
    trained = None
    if os.path.exists(done):
        with open(done) as f:
            trained = json.load(f)
        if trained.get("steps") != spec.steps:
            trained = None
    if trained is None:
        res = train(os.path.join(records, "Split-train", "*"), vocab_dir,
                    spec.model_config, spec.train_config, model_dir,
                    precision=spec.precision, printer=printer)
        trained = dataclasses.asdict(res)
    seconds["train"], t0 = time.time() - t0, time.time()
    pretrainer = load_pretrainer(os.path.join(model_dir, "pretrainer.keras"))
    loss, users = heldout_loss(pretrainer, records, spec.heldout_batch_size)
    seconds["heldout"], t0 = time.time() - t0, time.time()
    printer(f"held-out contrastive loss {loss:.4f} ({users} users, batch "
            f"{spec.heldout_batch_size}, chance about {math.log(spec.heldout_batch_size):.3f})")
    downstream = None
    if spec.downstream:
        downstream = _downstream(spec, pretrainer, vocab_dir, data_dir, rdir, printer)
        seconds["downstream"] = time.time() - t0
    keras.backend.clear_session()
    printer("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return {"params": trained["num_params"], "final_train_loss": trained["final_loss"],
            "heldout_loss": loss, "heldout_users": users, "downstream": downstream,
            "history": trained.get("history", []), "stage_seconds": seconds}


def _downstream(spec: RunSpec, pretrainer, vocab_dir: str, data_dir: str, rdir: str,
                printer: Callable[[str], None]) -> Dict[str, Any]:
    from clue_keras.export import export_saved_model

    cached = os.path.join(rdir, "downstream.json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    export_dir = os.path.join(rdir, "export")
    if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        export_saved_model(pretrainer, vocab_dir, export_dir)
    from clue_tfrs.protocol import TOPPOP, umlp_column  # tf.keras must be Keras 2 here
    from clue_tfrs.run import run_evaluation

    ds = spec.downstream
    outcome = run_evaluation(export_dir, os.path.join(data_dir, "downstream", ds.task),
                             out_dir=os.path.join(rdir, "downstream"), data_dir=data_dir,
                             epochs=ds.epochs, seed=spec.train_config.seed,
                             sequence_models=ds.sequence_models)
    table = outcome.table
    result = {"task": ds.task, "mrr": table.value(umlp_column("CLUE"), "MRR"),
              "mrr_untrained": table.value(umlp_column("Untrained"), "MRR"),
              "mrr_toppop": table.value(TOPPOP, "MRR"),
              "hr1": table.value(umlp_column("CLUE"), "HR@1"),
              "ndcg10": table.value(umlp_column("CLUE"), "NDCG@10")}
    printer(f"downstream {ds.task}: MRR {result['mrr']:.4f} (untrained "
            f"{result['mrr_untrained']:.4f}, TopPop {result['mrr_toppop']:.4f})")
    write_json_atomic(cached, result)
    try:
        import tf_keras

        tf_keras.backend.clear_session()
    except ImportError:  # pragma: no cover
        pass
    return result
