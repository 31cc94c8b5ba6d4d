"""Transfer on synthetic data: a briefly trained CLUE beats TopPop and the
untrained encoder on a downstream service never seen in pre-training."""

import json
import os

import pytest

import clue_tfrs  # noqa: F401  (Keras 2 for TFRS before anything else)
import clue_synth as synth
from clue_keras.config import PRESETS, TrainConfig
from clue_keras.export import export_saved_model
from clue_keras.data.prepare import prepare_local
from clue_keras.train import load_pretrainer, train
from components.clue_evaluator.blessing import evaluate_and_bless

MC = PRESETS["tiny"]
MARGIN = 0.02  # MRR points; seen: CLUE ~0.16, TopPop ~0.12, untrained ~0.12


@pytest.mark.slow
def test_trained_clue_beats_toppop_and_untrained_on_unseen_service(tmp_path):
    data = str(tmp_path / "data")
    manifest = synth.generate(data, users=1500, seed=3)
    assert "movies" in manifest["tasks"] and "movies" not in manifest["services"]
    records = str(tmp_path / "records")
    prepare_local(data, records, max_items=MC.max_items, max_tokens=MC.max_tokens,
                  vocab_size=MC.vocab_size)
    tc = TrainConfig(batch_size=64, train_steps=400, checkpoint_every=400, log_every=100,
                     learning_rate=2e-3)
    train(os.path.join(records, "Split-train", "*"), os.path.join(records, "vocab"), MC, tc,
          str(tmp_path / "model"), precision="float32", printer=lambda *_: None)
    model = load_pretrainer(str(tmp_path / "model" / "pretrainer.keras"))
    export = export_saved_model(model, os.path.join(records, "vocab"), str(tmp_path / "export"))

    out = str(tmp_path / "eval")
    # User features from the records the model was trained on, as the pipeline's Evaluator
    # reads BehaviorPreprocess's user_examples.
    outcome = evaluate_and_bless(export, os.path.join(data, "downstream", "movies"), out_dir=out,
                                 records=records,
                                 # blessing asks the 95% interval's lower bound to clear the
                                 # margin: zero here, the point estimates are checked below
                                 margin_over_toppop=0.0, margin_over_untrained=0.0,
                                 epochs=5, sequence_models=False)
    mrr = {c: outcome.table.value(c, "MRR") for c in outcome.table.columns}
    assert mrr["U-MLP (CLUE)"] > mrr["TopPop"] + MARGIN, mrr
    assert mrr["U-MLP (CLUE)"] > mrr["U-MLP (Untrained)"] + MARGIN, mrr
    assert outcome.blessed, outcome.reason
    assert sorted(os.listdir(out)) == ["blessing.json", "results.json", "results.md", "results.png"]
    assert json.load(open(os.path.join(out, "blessing.json")))["blessed"] is True
