"""`--data` omitted: the synthetic data set the `clue train` / `clue run` defaults use."""

from __future__ import annotations

from typing import Callable


def synthetic_data(data_dir: str, users: int, seed: int, log: Callable[[str], None] = print) -> str:
    """Generates synthetic csv logs into ``data_dir`` unless the same ones (users, seed,
    format) are already there; regenerating would change file times and so defeat the
    pipeline cache. Returns ``data_dir``."""
    import clue_synth as synth

    try:
        m = synth.load_manifest(data_dir)
    except FileNotFoundError:
        m = {}
    if m.get("users") == users and m.get("seed") == seed and m.get("format") == "csv":
        log(f"using the synthetic data already in {data_dir}")
        return data_dir
    log(f"generating synthetic behaviour logs for {users} users into {data_dir}")
    synth.generate(data_dir, users=users, seed=seed, fmt="csv")
    return data_dir
