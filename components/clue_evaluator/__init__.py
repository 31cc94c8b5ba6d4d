"""ClueEvaluator: downstream evaluation of the trained CLUE model as a TFX component.

Trains the paper's downstream models (TopPop, U-MLP on frozen CLUE and on
untrained-encoder features, T-UBM, Hybrid) on one downstream task, writes the
results table into a ``ModelEvaluation`` artifact and blesses the model (a
``ModelBlessing`` with a ``BLESSED`` / ``NOT_BLESSED`` file and custom property
``blessed`` = 1 / 0, exactly as TFX's Evaluator does) when U-MLP on CLUE
features beats the baselines on MRR by the configured margins. The stock
``Pusher`` reads that blessing.
"""
