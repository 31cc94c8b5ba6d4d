"""Precomputed user embeddings: batch export, the table on disk, a lookup SavedModel.

* ``table``: storage dtypes (float32 / float16 / int8 quantisation), the
  Parquet shards and ``manifest.json`` of an export, ``read_embeddings``;
* ``user_rows``: a CLUE serving SavedModel's input layout
  (``read_model_layout``) and one user's cleaned [P, S] row of texts
  (``user_text_row``);
* ``batch``: the Apache Beam export job (``export_embeddings``,
  `clue export-embeddings`);
* ``lookup_model``: a SavedModel serving the exported vectors by user id
  (``build_lookup_model``).

Dependencies point one way: ``batch`` -> ``table``, ``user_rows``,
``lookup_model`` -> ``table``.
"""
