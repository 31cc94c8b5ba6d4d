"""BehaviorPreprocess: custom Beam-powered TFX component (spec / executor / component).

Raw behaviour rows -> normalised, deduplicated, time-ordered, truncated,
split-by-user, BPE-tokenised per-user tf.Examples plus the vocabulary at
``<user_examples.uri>/vocab/`` and counts in ``<user_examples.uri>/stats.json``.
"""
