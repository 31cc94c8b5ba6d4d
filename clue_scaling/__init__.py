"""Scaling-law studies (paper section 5.3, Figures 4 and 5): ``clue scale``.

Modules: `grid` (grid file, run specs, PF-days), `store` (the study directory:
run ids, results, bookkeeping), `execute` (training and scoring one run),
`study` (running and resuming a grid), `fit` (compute frontier, power laws),
`plots` (figures), `report` (results.csv, fit.json, REPORT.md).

A *grid* (YAML, see ``examples/scaling_grid_tiny.yaml``) names model sizes,
global batch sizes B and sequence lengths S (``max_items``, items per user and
service: the paper's "sequence length" axis), optionally token lengths L
(``max_tokens``), and a fixed number of training steps. ``run_grid`` trains
every combination once and records, per run:

* ``params``: trainable parameters of the pre-trainer (embeddings included);
* ``tokens_seen`` = B x steps x S x L: token slots per service sequence fed
  to the model (padding included, as the paper's formula uses the configured
  sequence length, not the data's fill);
* ``pf_days`` = 6 x params x B x steps x (S x L) / 8.64e19 (the paper's
  formula; its "sequence length" is taken as the S x L token slots of one
  service's behaviour sequence). The P services of a user are *not*
  multiplied in: the paper's formula has no such factor, and for one data set
  P is a constant, so it scales every C by the same factor, leaves the fitted
  exponent b unchanged and multiplies a by P^b;
  C is the paper's *nominal* compute on the configured slots: it does not
  change with the length buckets of ``clue_keras.buckets`` (on by default for
  models >= 128 wide) or the packed child of ``clue_keras.packed`` (opt-in),
  which skip padding positions but give the same loss and gradients within
  float tolerance. What the encoder really computes after bucketing or
  packing is ``clue_bench.flops.forward_flops``, which ``clue bench train``
  reports (docs/PERFORMANCE.md); a study's C therefore stays comparable with
  the paper's and across bucket settings and data fill;
* ``final_train_loss``: contrastive loss at the training batch size, mean over
  the last checkpoint interval (not comparable across batch sizes: the CLIP
  loss of a batch of B users is bounded by about log B);
* ``heldout_loss``: contrastive loss of the trained model on held-out users
  (the ``eval`` and ``test`` splits) at ONE fixed batch size for the whole
  grid (``heldout_batch_size``), so it is comparable across runs: this is the
  paper's "test loss on the training distribution" (Figure 5 left);
* ``downstream``: MRR of the U-MLP on CLUE features on a downstream task
  (:func:`clue_tfrs.run.run_evaluation`), with the untrained-encoder and
  TopPop MRR for reference (Figure 5 right).

Bookkeeping: a run's id is a hash of its full configuration (model, training,
evaluation settings); its files live in ``<out>/runs/<id>/``; it is finished
when ``<out>/runs/<id>/result.json`` exists, which is written atomically and
last. An interrupted grid re-run skips finished runs (``skip (done)``) and an
interrupted run resumes from its own checkpoints (``clue_keras.train.train``).
``results.csv``, ``fit.json``, the figures and ``REPORT.md`` are always rebuilt
from the ``result.json`` files of the grid's runs.

Fit: the compute frontier is the set of runs whose held-out loss is lower than
that of every run with less compute (the Pareto frontier of (C, loss)). On it
``loss = a * C^-b + c`` is fitted with ``c >= 0`` (``scipy.optimize.curve_fit``,
parameterised by log a, with bounds) and the pure power law ``loss = a * C^-b``
(least squares in log-log space); each with R^2 on the loss values.
"""
