"""Downstream tasks of the synthetic data: item catalogues and users' clicks.

Catalogues depend only on ``(seed, task)``; a user's clicks on ``(seed, user, task)``.
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Dict, List, Tuple

import numpy as np

from clue_synth.settings import (DOWNSTREAM_TOPIC_RATE, ITEMS_PER_TOPIC, KNOWN_TASKS,
                                 WINDOW_SECONDS, WINDOW_START)
from clue_synth.users import UserProfile, cum, fill, pick
from clue_synth.vocabulary import C_TEMPLATE, COMPILED, N_COLS, TOPICS


@dataclasses.dataclass
class Catalogue:
    """One downstream task's items (positions index every list) and their popularity."""

    task: str
    item_ids: List[str]
    texts: List[str]
    topics: List[int]
    nouns: List[int]  # noun index (in its topic) the title mentions, -1 if none
    by_topic: Dict[int, List[int]]  # topic -> item positions, most popular first
    popularity: Dict[int, np.ndarray]  # topic -> weights aligned with by_topic
    global_cum: List[float]  # cumulative popularity over all items


def make_catalogue(seed: int, task: str) -> Catalogue:
    """``ITEMS_PER_TOPIC`` unique titles per topic for ``task``; depends on (seed, task) only."""
    rng = np.random.default_rng([seed, 1_000_003, KNOWN_TASKS.index(task)])
    templates = COMPILED[task]
    texts: List[str] = []
    topics: List[int] = []
    nouns: List[int] = []
    seen = set()
    for t, topic in enumerate(TOPICS):
        made = tries = 0
        while made < ITEMS_PER_TOPIC:
            u = rng.random(N_COLS).tolist()
            template, fields = templates[int(u[C_TEMPLATE] * len(templates))]
            vals = fill(fields, u, topic, t, False, None)  # type: ignore[arg-type]
            noun = topic.nouns.index(vals["noun"]) if "noun" in vals else -1
            if task != "books" and "noun" in vals:
                vals["noun"] = string.capwords(vals["noun"])  # titles: "The Lost Coffee Beans"
            text = template.format(**vals)
            tries += 1
            if text in seen:
                if tries % 10:
                    continue  # draw again; after ten clashes number the title instead
                text = f"{text} Vol. {tries // 10 + 1}"
                if text in seen:
                    continue
            seen.add(text)
            texts.append(text)
            topics.append(t)
            nouns.append(noun)
            made += 1
    order = rng.permutation(len(texts)).tolist()  # ids do not reveal the topic
    texts = [texts[i] for i in order]
    topics = [topics[i] for i in order]
    nouns = [nouns[i] for i in order]
    item_ids = [f"{task}-{i:05d}" for i in range(len(texts))]
    by_topic: Dict[int, List[int]] = {t: [] for t in range(len(TOPICS))}
    for i, t in enumerate(topics):
        by_topic[t].append(i)
    popularity = {}
    pop_all = np.zeros(len(texts))
    for t, items in by_topic.items():
        w = 1.0 / np.arange(1, len(items) + 1) ** 0.8  # Zipf within a topic
        popularity[t] = w
        pop_all[items] = w
    return Catalogue(task, item_ids, texts, topics, nouns, by_topic, popularity, cum(pop_all))


def interactions(p: UserProfile, seed: int, cat: Catalogue) -> List[Tuple[int, int]]:
    """User ``p``'s clicks in ``cat`` as (timestamp, item position), oldest first, no repeats."""
    rng = np.random.default_rng([seed, p.index, 100 + KNOWN_TASKS.index(cat.task)])
    n = int(np.clip(np.round(rng.lognormal(math.log(6.0), 0.8)), 1, 60))
    # Within a topic: popularity times the user's liking of the noun in the title.
    cums = {}
    for t in p.interests:
        items = cat.by_topic[t]
        like = np.array([1.0 + 3.0 * p.noun_pref[t][cat.nouns[i]] if cat.nouns[i] >= 0 else 1.0 for i in items])
        cums[t] = cum(cat.popularity[t] * like)
    u = rng.random((3 * n, 3)).tolist()
    picked: List[int] = []
    seen = set()
    for a, b, c in u:
        if len(picked) == n:
            break
        if a < DOWNSTREAM_TOPIC_RATE:
            t = p.interests[pick(p.topic_cum, b)]
            item = cat.by_topic[t][pick(cums[t], c)]
        else:
            item = pick(cat.global_cum, c)
        if item not in seen:
            seen.add(item)
            picked.append(item)
    stamps = np.sort(rng.integers(WINDOW_START, WINDOW_START + WINDOW_SECONDS, size=len(picked))).tolist()
    return list(zip(stamps, picked))
