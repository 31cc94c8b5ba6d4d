"""Users of the synthetic data: latent interests and pre-training behaviours.

Each user has 1-3 interest topics with Dirichlet weights and, inside each
topic, a Dirichlet preference over its nouns, brands and entities (brand
loyalty). Both are shared by all services and downstream tasks, so a user's
logs in one service predict their logs in another and their downstream clicks.
``NOISE_RATE`` of behaviours come from a uniformly random topic. Every draw for
user ``i`` comes from ``np.random.default_rng([seed, i, stream])``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from clue_synth.settings import (COLD_START_RATE, COLD_TASK_RATE, EMPTY_RATE, HEAVY_RATE,
                                 KNOWN_SERVICES, KNOWN_TASKS, LIGHT_RATE, MESSY_SPACE_RATE,
                                 NOISE_RATE, REPEAT_RATE, SERVICE_RATE, SINGLE_SERVICE_RATE,
                                 TASK_RATE, WINDOW_SECONDS, WINDOW_START)
from clue_synth.vocabulary import (ADJECTIVES, C_CASE, C_EMPTY, C_MESS, C_NOISE, C_REPEAT,
                                   C_REPEAT_PICK, C_TEMPLATE, C_TOPIC, COMPILED, EDITIONS,
                                   FIELD_COL, GENERIC, GENRES, MONTHS, N_COLS, SEASONS, SPECS,
                                   TOPICS, VERDICTS, Topic)


@dataclasses.dataclass
class UserProfile:
    """Latent state of one user; lists of cumulative weights for bisect sampling."""

    index: int
    user_id: str
    interests: List[int]
    weights: List[float]
    topic_cum: List[float]
    # per interest topic: cumulative preference over nouns / brands / entities
    noun_cum: Dict[int, List[float]]
    brand_cum: Dict[int, List[float]]
    entity_cum: Dict[int, List[float]]
    noun_pref: Dict[int, np.ndarray]
    services: List[str]
    counts: Dict[str, int]
    tasks: List[str]


def user_id_for(index: int) -> str:
    """The stable user key of user number ``index`` (``u0000042``)."""
    return f"u{index:07d}"


def cum(p: np.ndarray) -> List[float]:
    """Cumulative weights of ``p``, normalised to end at 1 (for `pick`)."""
    c = np.cumsum(p)
    c /= c[-1]
    return c.tolist()


def pick(cum_weights: List[float], u: float) -> int:
    """The index a uniform ``u`` in [0, 1) falls on in ``cum_weights``."""
    return min(bisect.bisect_right(cum_weights, u), len(cum_weights) - 1)


def make_profile(seed: int, index: int, services: Sequence[str], tasks: Sequence[str]) -> Tuple[UserProfile, np.random.Generator]:
    """Draws user ``index``'s latent state; returns it and the generator (stream 0)
    that then draws the user's behaviours."""
    rng = np.random.default_rng([seed, index, 0])
    n_topics = len(TOPICS)
    k = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    interests = rng.choice(n_topics, size=k, replace=False)
    weights = rng.dirichlet(np.full(k, 2.0))
    order = np.argsort(-weights, kind="stable")
    interests, weights = [int(t) for t in interests[order]], [round(float(w), 6) for w in weights[order]]
    noun_cum, brand_cum, entity_cum, noun_pref = {}, {}, {}, {}
    for t in interests:
        topic = TOPICS[t]
        np_ = rng.dirichlet(np.full(len(topic.nouns), 0.5))
        noun_pref[t] = np_
        noun_cum[t] = cum(np_)
        brand_cum[t] = cum(rng.dirichlet(np.full(len(topic.brands), 0.5)))
        entity_cum[t] = cum(rng.dirichlet(np.full(len(topic.entities), 0.5)))

    # Which pre-training services; always draw the same number of uniforms.
    u_kind, u_heavy, u_light = rng.random(3)
    u_services = rng.random(len(KNOWN_SERVICES))
    u_tasks = rng.random(len(KNOWN_TASKS))
    perm = rng.permutation(len(services)).tolist() if services else []
    if u_kind < COLD_START_RATE:
        chosen: List[str] = []
    elif u_kind < COLD_START_RATE + SINGLE_SERVICE_RATE or len(services) == 1:
        chosen = [services[perm[0]]]
    else:
        chosen = [s for s, u in zip(services, u_services) if u < SERVICE_RATE]
        for i in perm:  # at least two services
            if len(chosen) >= 2:
                break
            if services[i] not in chosen:
                chosen.append(services[i])
    chosen = sorted(chosen)

    counts: Dict[str, int] = {}
    lengths = np.clip(np.round(rng.lognormal(math.log(12.0), 0.8, size=len(KNOWN_SERVICES))), 3, 150)
    light_n = rng.integers(1, 3, size=len(KNOWN_SERVICES))
    heavy_n = int(rng.integers(200, 400))
    for j, s in enumerate(chosen):
        counts[s] = int(light_n[j]) if u_light < LIGHT_RATE else int(lengths[j])
    if chosen and u_heavy < HEAVY_RATE:
        counts[chosen[perm[0] % len(chosen)]] = heavy_n

    rate = COLD_TASK_RATE if not chosen else TASK_RATE
    known_u = dict(zip(KNOWN_TASKS, u_tasks))
    in_tasks = [t for t in tasks if known_u[t] < rate]
    if not chosen and not in_tasks and tasks:
        in_tasks = [min(tasks, key=lambda t: known_u[t])]
    profile = UserProfile(
        index=index, user_id=user_id_for(index), interests=interests, weights=weights,
        topic_cum=cum(np.asarray(weights)), noun_cum=noun_cum, brand_cum=brand_cum,
        entity_cum=entity_cum, noun_pref=noun_pref, services=chosen, counts=counts, tasks=in_tasks)
    return profile, rng


def fill(fields: Iterable[str], u: List[float], topic: Topic, t: int, own: bool, p: UserProfile) -> Dict[str, Any]:
    """Values for a template's fields. ``own``: use the user's preferences in topic ``t``."""
    out: Dict[str, Any] = {}
    for f in fields:
        x = u[FIELD_COL[f]]
        if f == "brand":
            out[f] = topic.brands[pick(p.brand_cum[t], x) if own else int(x * len(topic.brands))]
        elif f == "noun":
            out[f] = topic.nouns[pick(p.noun_cum[t], x) if own else int(x * len(topic.nouns))]
        elif f == "entity":
            out[f] = topic.entities[pick(p.entity_cum[t], x) if own else int(x * len(topic.entities))]
        elif f == "brand2":
            out[f] = topic.brands[int(x * len(topic.brands))]
        elif f == "noun2":
            out[f] = topic.nouns[int(x * len(topic.nouns))]
        elif f == "entity2":
            out[f] = topic.entities[int(x * len(topic.entities))]
        elif f == "ko":
            out[f] = topic.korean[int(x * len(topic.korean))]
        elif f in ("spec", "spec2"):
            out[f] = SPECS[int(x * len(SPECS))]
        elif f == "generic":
            out[f] = GENERIC[int(x * len(GENERIC))]
        elif f == "num":
            out[f] = 2 + int(x * 9)
        elif f == "pct":
            out[f] = 3 + int(x * 40)
        elif f == "year":
            out[f] = 2019 + int(x * 7)
        else:
            table = {"month": MONTHS, "season": SEASONS, "verdict": VERDICTS, "adj": ADJECTIVES,
                     "genre": GENRES, "edition": EDITIONS}[f]
            out[f] = table[int(x * len(table))]
    for f, words in (("brand", topic.brands), ("noun", topic.nouns), ("entity", topic.entities)):
        if f + "2" in out and out[f + "2"] == out.get(f):  # "X vs X" -> the next word
            out[f + "2"] = words[(words.index(out[f]) + 1) % len(words)]
    return out


_EMPTY_TEXTS = ("", " ", "  \t ")


def behaviors(p: UserProfile, rng: np.random.Generator) -> List[Tuple[int, str, str]]:
    """User ``p``'s pre-training behaviours as (timestamp, service, item_text), oldest first."""
    rows: List[Tuple[int, str, str]] = []
    n_topics = len(TOPICS)
    for service in p.services:
        n = p.counts[service]
        u_all = rng.random((n, N_COLS)).tolist()
        stamps = rng.integers(WINDOW_START, WINDOW_START + WINDOW_SECONDS, size=n).tolist()
        templates = COMPILED[service]
        texts: List[str] = []
        for u in u_all:
            if texts and u[C_REPEAT] < REPEAT_RATE:
                texts.append(texts[int(u[C_REPEAT_PICK] * len(texts))])
                continue
            if u[C_EMPTY] < EMPTY_RATE:
                texts.append(_EMPTY_TEXTS[int(u[C_MESS] * len(_EMPTY_TEXTS))])
                continue
            own = u[C_NOISE] >= NOISE_RATE
            t = p.interests[pick(p.topic_cum, u[C_TOPIC])] if own else int(u[C_TOPIC] * n_topics)
            own = own and t in p.noun_cum
            template, fields = templates[int(u[C_TEMPLATE] * len(templates))]
            text = template.format(**fill(fields, u, TOPICS[t], t, own, p))
            if service == "search" and u[C_CASE] < 0.6:
                text = text.lower()
            if u[C_MESS] < MESSY_SPACE_RATE:
                text = ("  " + text) if u[C_CASE] < 0.3 else text.replace(" ", "  ", 1) + " \t"
            texts.append(text)
        rows.extend(zip(stamps, [service] * n, texts))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows
