"""Training without TFX (`clue train`): prepare per-user records in-process (the
same code as the pipeline's BehaviorPreprocess), train, export the serving
SavedModel and check held-out cross-service retrieval."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Dict

from clue_keras.config import ModelConfig, TrainConfig


@dataclasses.dataclass
class LocalTrainResult:
    """What `train_local` did.

    Attributes:
      train: `clue_keras.train.TrainResult` of the training run.
      retrieval: `clue_keras.cross_service.cross_service_top1` on the test split
        (``queries``, ``top1``, ``chance``).
      preprocessing: the stats `prepare_local` returned.
      export_dir: the serving SavedModel directory.
    """

    train: Any
    retrieval: Dict[str, float]
    preprocessing: Dict[str, Any]
    export_dir: str


def train_local(data_dir: str, out_dir: str, model_config: ModelConfig,
                train_config: TrainConfig, precision: str = "auto", strategy=None,
                log: Callable[[str], None] = print) -> LocalTrainResult:
    """Prepares ``data_dir``'s behaviour logs into ``out_dir/records``, trains into
    ``out_dir/model`` (resuming from its checkpoints), scores cross-service top-1
    retrieval on the test split and exports the serving SavedModel to
    ``out_dir/export`` (replacing an older one)."""
    import numpy as np

    from clue_keras.cross_service import cross_service_top1
    from clue_keras.data.input import load_split_arrays
    from clue_keras.export import export_saved_model
    from clue_keras.data.prepare import prepare_local
    from clue_keras.tokenizer import load_vocab_info
    from clue_keras.train import load_pretrainer, train

    mc = model_config
    records = os.path.join(out_dir, "records")
    stats = prepare_local(data_dir, records, max_items=mc.max_items, max_tokens=mc.max_tokens,
                          vocab_size=mc.vocab_size)
    log("preprocessing: " + json.dumps(stats, sort_keys=True))
    vocab_dir = os.path.join(records, "vocab")
    model_dir = os.path.join(out_dir, "model")
    result = train(os.path.join(records, "Split-train", "*"), vocab_dir, mc, train_config,
                   model_dir, eval_files=os.path.join(records, "Split-eval", "*"),
                   strategy=strategy, precision=precision)
    model = load_pretrainer(os.path.join(model_dir, "pretrainer.keras"))
    arrays = load_split_arrays(os.path.join(records, "Split-test", "*"), load_vocab_info(vocab_dir))
    out = model.encoder.predict({"token_ids": arrays["token_ids"]}, batch_size=128, verbose=0)
    check = cross_service_top1(np.asarray(out["user_embedding"]), np.asarray(out["service_mask"]))
    export_dir = os.path.join(out_dir, "export")
    if os.path.exists(export_dir):
        shutil.rmtree(export_dir)
    export_saved_model(model, vocab_dir, export_dir)
    return LocalTrainResult(train=result, retrieval=check, preprocessing=stats,
                            export_dir=export_dir)

