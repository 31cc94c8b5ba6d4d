"""Cross-service retrieval check: does a user's embedding in service A find the
same user's embedding in service B among all held-out users?"""

from __future__ import annotations

from typing import Dict

import numpy as np


def cross_service_top1(embeddings: np.ndarray, service_mask: np.ndarray) -> Dict[str, float]:
    """Top-1 accuracy of same-user retrieval across services.

    Args:
      embeddings: float [N, P, D] per-service user embeddings (any scale).
      service_mask: bool [N, P].
    Returns:
      {"top1": accuracy over every ordered pair (A, B) and every user having both,
       "chance": mean over those queries of 1 / (number of candidates),
       "queries": number of queries}. Candidates for (A, B) are all users with B.
    """
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    n, p, _ = e.shape
    hits, chance, queries = 0, 0.0, 0
    for a in range(p):
        for b in range(p):
            if a == b:
                continue
            cand = np.flatnonzero(service_mask[:, b])
            rows = np.flatnonzero(service_mask[:, a] & service_mask[:, b])
            if len(rows) == 0 or len(cand) < 2:
                continue
            sims = e[rows, a] @ e[cand, b].T                      # [rows, cand]
            best = cand[np.argmax(sims, axis=1)]
            hits += int(np.sum(best == rows))
            chance += len(rows) / len(cand)
            queries += len(rows)
    if queries == 0:
        return {"top1": float("nan"), "chance": float("nan"), "queries": 0}
    return {"top1": hits / queries, "chance": chance / queries, "queries": queries}
