"""One worker of the multi-process MultiWorkerMirroredStrategy tests
(tests/test_multiworker.py); not collected by pytest.

    TF_CONFIG=... python tests/multiworker_worker.py SPEC_JSON

SPEC_JSON: {"files", "eval_files" (or null), "vocab", "model_dir", "preset",
"train": TrainConfig fields, "step_delay_s": seconds slept after every step (to
kill a worker mid-run)}.
Prints train()'s lines, then ``RESULT {json TrainResult}``; exits 1 on an error.
"""

import dataclasses
import json
import os
import sys
import time


def main() -> int:
    spec = json.loads(sys.argv[1])
    import tensorflow as tf

    # Two workers and the test share a few cores: one op at a time each.
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from clue_keras.distribute import get_strategy

    strategy = get_strategy()  # first: MWMS must configure collectives at startup

    import keras

    from clue_keras.config import PRESETS, TrainConfig
    from clue_keras.train import train

    class _Slow(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(spec["step_delay_s"])

    result = train(spec["files"], spec["vocab"], PRESETS[spec["preset"]],
                   TrainConfig(**spec["train"]), spec["model_dir"],
                   eval_files=spec.get("eval_files"), strategy=strategy,
                   precision="float32", printer=lambda line: print(line, flush=True),
                   callbacks=[_Slow()] if spec.get("step_delay_s") else [])
    print("RESULT " + json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
