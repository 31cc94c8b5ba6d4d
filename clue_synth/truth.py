"""Readers of what only the generator knows: the manifest and the users' latent interests.

The data tables themselves (behaviours, interactions, catalogues) are read with
`clue_keras.data.tables`, like any other data set.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict


def load_manifest(data_dir: str) -> Dict[str, Any]:
    """``data_dir/manifest.json`` as a dict (FileNotFoundError names the path)."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no manifest (not a `clue synth` directory, or still being written)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_user_interests(data_dir: str):
    """Ground truth per user: ``user_id``, ``interests`` (topic ids, strongest first),
    ``weights`` (summing to 1), ``services`` (with logs) and ``tasks`` (with clicks)."""
    import pandas as pd

    path = os.path.join(data_dir, "truth", "user_interests.jsonl")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
    return pd.DataFrame.from_records(records, columns=["user_id", "interests", "weights", "services", "tasks"])
