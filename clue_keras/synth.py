"""Synthetic multi-service behaviour logs with a known ground truth (``clue synth``).

The generator writes what the pipeline expects as raw input (see
docs/ARCHITECTURE.md, "clue synth --out DIR layout"):

```
DIR/behaviors/behaviors-00000-of-0000N.<fmt>  user_id, service, timestamp, item_text
DIR/downstream/<task>/interactions.<fmt>      user_id, item_id, item_text, timestamp
DIR/downstream/<task>/catalogue.jsonl         item_id, item_text, topic
DIR/truth/user_interests.jsonl                user_id, interests, weights, services, tasks
DIR/manifest.json                             seed, users, services, tasks, topics, rows per file
```

How the data is made
--------------------
* There are ``len(TOPICS)`` (24) topics. Each has its own vocabulary: nouns,
  brands, named entities and Korean words. Every service renders the same
  vocabulary through its own templates (shopping: product titles, search:
  queries, news: headlines; downstream: movie / book / webtoon titles), mixed
  with generic words shared by all topics (sizes, colours, "sale", years).
* Each user has 1-3 interest topics with Dirichlet weights and, inside each
  topic, a Dirichlet preference over its nouns, brands and entities (brand
  loyalty). Both are shared by all services and downstream tasks, so a user's
  logs in one service predict their logs in another and their downstream
  clicks. ``NOISE_RATE`` of behaviours come from a uniformly random topic.
* Edge cases the pipeline must handle: exact repeats (same user, service and
  text at another timestamp), non-ASCII text (Korean, accented brands),
  commas and double quotes, irregular whitespace, a few empty or
  whitespace-only texts, users with one or two behaviours, users with 200+
  behaviours in one service, users in only one service, and cold-start users
  who have downstream interactions but no pre-training logs at all.

Determinism
-----------
Every random draw for user ``i`` comes from ``np.random.default_rng([seed, i,
stream])``, so a user's rows depend only on ``(seed, i, services, tasks)``:
the same seed gives byte-identical files, and the rows are the same whatever
``users_per_shard`` is (only how they are cut into shards changes).
Catalogues depend only on ``(seed, task)``. Users are generated and written
in batches of ``BATCH_USERS``, so memory does not grow with ``users``.

Every file is written under a temporary name in its final directory and
renamed when complete; ``manifest.json`` is written last, so a directory with
a manifest is a complete data set.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import glob
import json
import math
import os
import string
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from clue_keras.atomic import write_text_atomic

KNOWN_SERVICES: Tuple[str, ...] = ("news", "search", "shopping")
KNOWN_TASKS: Tuple[str, ...] = ("movies", "books", "webtoon")
FORMATS: Tuple[str, ...] = ("csv", "jsonl", "parquet")
BEHAVIOR_COLUMNS: Tuple[str, ...] = ("user_id", "service", "timestamp", "item_text")
INTERACTION_COLUMNS: Tuple[str, ...] = ("user_id", "item_id", "item_text", "timestamp")
CATALOGUE_COLUMNS: Tuple[str, ...] = ("item_id", "item_text", "topic")

WINDOW_START = 1_672_531_200  # 2023-01-01T00:00:00Z, unix seconds
WINDOW_SECONDS = 730 * 86_400  # two years
BATCH_USERS = 2_000  # users generated and written per batch (a Parquet row group)
MANIFEST_VERSION = 1

# Behaviour mix (probabilities per user or per row).
NOISE_RATE = 0.15  # behaviour drawn from a uniformly random topic
REPEAT_RATE = 0.10  # behaviour repeats an earlier text of the same user and service
EMPTY_RATE = 0.002  # item_text is "" or whitespace only
MESSY_SPACE_RATE = 0.01  # item_text has doubled / leading / trailing whitespace
COLD_START_RATE = 0.05  # user has no pre-training logs (downstream only)
SINGLE_SERVICE_RATE = 0.15  # user active in exactly one pre-training service
SERVICE_RATE = 0.75  # otherwise: each service kept with this probability (>= 2 kept)
HEAVY_RATE = 0.03  # user has 200-399 behaviours in one service
LIGHT_RATE = 0.10  # user has 1-2 behaviours per service
TASK_RATE = 0.6  # user with logs takes part in a downstream task
COLD_TASK_RATE = 0.9  # cold-start user takes part in a downstream task (>= 1 task)
DOWNSTREAM_TOPIC_RATE = 0.8  # downstream click drawn from the user's own topics
ITEMS_PER_TOPIC = 30  # catalogue items per topic per task


@dataclasses.dataclass(frozen=True)
class Topic:
    """One latent interest and its vocabulary (shared by all services)."""

    name: str
    nouns: Tuple[str, ...]
    brands: Tuple[str, ...]
    entities: Tuple[str, ...]
    korean: Tuple[str, ...]


def _topic(name: str, nouns: str, brands: str, entities: str, korean: str) -> Topic:
    split = lambda s: tuple(w.strip() for w in s.split("|"))  # noqa: E731
    return Topic(name, split(nouns), split(brands), split(entities), split(korean))


# fmt: off
TOPICS: Tuple[Topic, ...] = (
    _topic("smartphones", "smartphone|phone case|wireless charger|screen protector|earbuds|smartwatch|power bank|USB-C cable",
           "Novaphone|Pixelle|Orbix|Zentra|Kairo", "Orbix Mobile|Telvana|Nexcom Group|한빛텔레콤",
           "스마트폰|휴대폰 케이스|무선 충전기|보호필름"),
    _topic("laptops", "laptop|mechanical keyboard|monitor|mouse|docking station|SSD|graphics card|webcam",
           "Corebook|Lumina|Voltex|Archer|Bytewise", "Bytewise Inc.|Siltron Labs|Quantix|Dr. Mira Chen",
           "노트북|기계식 키보드|모니터|마우스"),
    _topic("running", "running shoes|sports bra|fitness tracker|yoga mat|dumbbells|compression tights|water bottle|foam roller",
           "Stridex|Aerolite|Pulsefit|Momentum|Kinetiq", "City Marathon|Pulsefit Club|Coach Elena Ruiz|Olympic Committee",
           "러닝화|운동복|마라톤|요가매트"),
    _topic("skincare", "sunscreen|moisturizer|serum|cleansing foam|sheet mask|lip balm|toner|retinol cream",
           "Dewberry|Lumière|Aquavie|Seoul Glow|Petalé", "Aquavie Cosmetics|K-Beauty Expo|Dr. Ha-eun Park|Glow Lab",
           "선크림|수분크림|세럼|마스크팩"),
    _topic("cooking", "frying pan|cast iron skillet|chef knife|rice cooker|air fryer|cutting board|stock pot|spice rack",
           "Ironhearth|Cucina|Blazewell|Hanami|Saveur", "Chef Marco Bellini|Saveur Kitchen|Culinary Institute|Hanami Foods",
           "프라이팬|에어프라이어|밥솥|레시피"),
    _topic("coffee", "coffee beans|espresso machine|drip bag|milk frother|burr grinder|cold brew|french press|latte mug",
           "Roastwell|Café Noël|Bean&Co|Kaffa|Mokador", "Roastwell Coffee|World Barista Championship|Kaffa Roasters|Barista Jin Kim",
           "원두|커피머신|드립백|콜드브루"),
    _topic("gaming", "game controller|gaming chair|console|gaming headset|RGB keyboard|game pass|VR headset|arcade stick",
           "Nexplay|Vortigo|Pixelforge|Ragebit|Lunaris", "Pixelforge Studios|Nexplay Entertainment|e-Sports League|Vortigo Games",
           "게임패드|게이밍 의자|콘솔|헤드셋"),
    _topic("camping", "tent|sleeping bag|hiking boots|camping chair|lantern|backpack|portable stove|trekking poles",
           "Trailcrest|Summitra|Northpine|Campfire & Co|Alpenwald", "National Parks Service|Summitra Outdoors|Ranger Tom Hale|Alpine Club",
           "캠핑|텐트|침낭|등산화"),
    _topic("pets", "dog food|cat litter|pet bed|chew toy|cat tower|dog leash|pet shampoo|pet treats",
           "Pawsome|Whiskerly|Barkley|Furrytail|Nutripet", "Animal Rescue League|Whiskerly Pet Care|Dr. Sophie Lane|City Dog Show",
           "강아지 사료|고양이 모래|간식|캣타워"),
    _topic("baby", "diapers|stroller|baby formula|car seat|baby monitor|onesie|teething toy|baby carrier",
           "Littlebee|Cradlo|Tinysteps|Bébé Doux|Snugglo", "Parenting Today|Littlebee Group|Pediatric Association|Dr. Anna Müller",
           "기저귀|유모차|분유|아기띠"),
    _topic("cars", "tires|dash cam|car wax|engine oil|seat covers|wiper blades|jump starter|roof rack",
           "Motoria|Drivex|Torqon|Autelia|Roadmaster", "Motoria Motors|Torqon Automotive|Grand Prix Series|Auto Safety Board",
           "타이어|블랙박스|엔진오일|세차"),
    _topic("travel", "suitcase|travel pillow|flight tickets|hotel deals|passport holder|travel adapter|packing cubes|city guide",
           "Jetsetter|Voyagea|Globetrot|Nomadix|Wanderly", "SkyWays Airlines|Voyagea Travel|Tourism Board|Lisbon City Council",
           "여행|항공권|호텔|캐리어"),
    _topic("soccer", "soccer ball|football boots|jersey|shin guards|goalkeeper gloves|training cones|match tickets|club scarf",
           "Goalix|Strikera|Pitchline|Kickforce|Fútbolo", "FC Riverside|Premier Cup|Coach Luis Ortega|National Football Federation",
           "축구화|축구공|유니폼|경기 티켓"),
    _topic("baseball", "baseball glove|baseball bat|batting helmet|baseball cap|pitching machine|cleats|team jersey|ballpark tickets",
           "Diamondline|Slugger Pro|Homeplate|Fastball|Curveco", "Seoul Tigers|Busan Mariners|Pitcher Jae-won Lee|Korea Baseball League",
           "야구 글러브|야구 배트|야구장|응원 유니폼"),
    _topic("finance", "stocks|index fund|savings account|dividend ETF|credit card|retirement plan|crypto wallet|tax return",
           "Fintro|Capitalis|Coinvera|Yieldly|Ledgerline", "Central Bank|Capitalis Securities|Finance Minister Lee|Stock Exchange",
           "주식|펀드|적금|배당주"),
    _topic("home", "sofa|bed frame|floor lamp|bookshelf|dining table|rug|storage cabinet|curtains",
           "Nordhem|Casaluxe|Woodrow|Lindqvist|Maison Élan", "Nordhem Home|Design Week|Casaluxe Interiors|Architect Yuna Seo",
           "소파|침대|조명|수납장"),
    _topic("gardening", "flower pots|seeds|fertilizer|succulents|garden hose|pruning shears|raised bed|potting soil",
           "Greenleaf|Bloomly|Rootwise|Verdana|Sprouty", "Botanical Garden|Royal Horticultural Show|Greenleaf Nursery|Gardener Ruth Cole",
           "화분|씨앗|비료|다육이"),
    _topic("fashion", "dress|handbag|wool coat|sneakers|denim jacket|silk scarf|ankle boots|sunglasses",
           "Velora|Maison Rouge|Atelier Nuit|Stylo|Jolie", "Fashion Week|Velora House|Designer Chloé Martin|Atelier Nuit Group",
           "원피스|가방|코트|스니커즈"),
    _topic("kpop", "album|concert tickets|light stick|photocard|vinyl record|fan meeting|poster|music streaming",
           "Starwave|Melodix|Hallyu Records|Echo Star|Neon Beat", "Starwave Entertainment|STELLA|Music Awards|Neon Beat Studio",
           "아이돌|앨범|콘서트|응원봉"),
    _topic("photography", "camera body|prime lens|tripod|memory card|camera bag|flash|film roll|lens filter",
           "Optika|Shutterix|Lensmark|Focalis|Aperto", "Optika Imaging|Photo Biennale|Photographer Kai Berg|Lensmark Corp",
           "카메라|렌즈|삼각대|필름"),
    _topic("cycling", "road bike|bike helmet|e-bike|cycling jersey|bike lights|bike lock|saddle|cycling shoes",
           "Velocita|Spokeline|Pedalon|Crankhaus|Rideon", "Tour de Ville|Velocita Bikes|Cyclist Marta Novak|Bike Share Program",
           "자전거|헬멧|전기자전거|자전거 라이트"),
    _topic("drinks", "red wine|craft beer|whisky|wine glasses|sake|decanter|champagne|cocktail set",
           "Château Brume|Hopfield|Oakmere|Vinalia|Barrelhouse", "Wine Spectacle|Hopfield Brewery|Sommelier Jean Dupré|Oakmere Distillery",
           "와인|수제맥주|위스키|와인잔"),
    _topic("health", "multivitamin|probiotics|protein powder|omega-3|collagen|vitamin D|sleep aid|electrolyte drink",
           "Vitalis|Purenature|Nutrilife|Wellspring|Biocore", "Health Ministry|Vitalis Labs|Dr. Grace Okafor|Food Safety Agency",
           "영양제|비타민|유산균|단백질 보충제"),
    _topic("realestate", "apartment|studio rental|mortgage|home insurance|moving service|new development|office space|townhouse",
           "Urbanest|Homefinder|Keystone|Skyline Living|Dwellio", "Housing Authority|Urbanest Realty|Mayor Park|Land Registry",
           "아파트|전세|월세|분양"),
)
# fmt: on

# Words shared by every topic: they carry no topic signal.
SPECS = ("256GB", "black", "white", "navy", "XL", "2-pack", "set of 3", "pro", "max", "mini",
         "lite", "2025 model", "refurbished", "free shipping", "1+1", "large", "small", '14"',
         '6.5"', "waterproof", "정품", "무료배송", "리퍼", "특가")
GENERIC = ("SALE", "NEW", "official", "best", "top 10", "deal", "limited", "hot", "gift", "이벤트")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
SEASONS = ("spring", "summer", "autumn", "winter", "holiday season")
VERDICTS = ("worth it", "overpriced", "a bargain", "the best yet", "a mixed bag")
ADJECTIVES = ("Last", "Secret", "Broken", "Golden", "Midnight", "Lost", "Silent", "Little", "Wild", "Final")
GENRES = ("drama", "comedy", "thriller", "documentary", "romance", "action", "animation")
EDITIONS = ("2nd", "3rd", "Revised", "Pocket", "Illustrated")

# Templates per service; {field}s are filled per row (see _ROW_FIELDS).
SERVICE_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "shopping": (
        "{brand} {noun} {spec}",
        "{brand} {noun} {spec}, {spec2}",
        "[{generic}] {brand} {noun} {spec}",
        "{brand} {ko} {spec}",
        "{brand} {noun} ({num} pcs)",
        "{ko} {noun} {spec} {generic}",
        '{brand} "{noun}" {spec}',
    ),
    "search": (
        "best {noun} near me",
        "{noun} reviews",
        "{brand} {noun} price",
        "how to choose a {noun}",
        "{brand} vs {brand2}",
        "{ko} 추천",
        "{ko} 가격 비교",
        "{noun} {year}",
        "cheap {noun} {spec}",
        "{entity}",
        "{brand} {noun} 후기",
    ),
    "news": (
        "{entity} announces new {noun} lineup",
        "{entity} shares rise {pct}% after {noun} sales jump",
        "Why {noun} are trending this {season}",
        "{entity} and {entity2} in talks over {noun} deal",
        "[속보] {entity}, {ko} 신제품 공개",
        "Review: the {brand} {noun} is {verdict}",
        '{entity} says {noun} demand will "keep growing"',
        "Report: {noun} prices up {pct}% in {month}, {entity} says",
    ),
}

TASK_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "movies": (
        "The {adj} {noun} ({genre}, {year})",
        "{entity}: The Movie",
        "{ko}의 비밀",
        "{brand} Nights ({genre})",
        "Chasing the {adj} {noun}",
    ),
    "books": (
        "{entity}: A Guide to {noun}",
        "The Art of {noun}, {edition} Edition",
        "{ko} 입문",
        "{noun} for Beginners by {entity}",
        "The {adj} {brand} Story",
    ),
    "webtoon": (
        "{ko} 일기",
        "My {adj} {noun} Life",
        "Reborn as a {noun} Master",
        "{entity} Chronicles",
        "{brand} Academy: {adj} Season",
    ),
}

# One uniform column per field, so a row needs one fixed-size draw.
_ROW_FIELDS = ("brand", "brand2", "noun", "noun2", "entity", "entity2", "ko", "spec", "spec2",
               "generic", "num", "pct", "year", "month", "season", "verdict", "adj", "genre", "edition")
_FIELD_COL = {f: i for i, f in enumerate(_ROW_FIELDS)}
# Control columns after the fields.
_C_TOPIC, _C_NOISE, _C_TEMPLATE, _C_REPEAT, _C_REPEAT_PICK, _C_EMPTY, _C_MESS, _C_CASE = range(
    len(_ROW_FIELDS), len(_ROW_FIELDS) + 8)
_N_COLS = len(_ROW_FIELDS) + 8


def _template_fields(template: str) -> Tuple[str, ...]:
    fields = tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)
    unknown = set(fields) - set(_ROW_FIELDS)
    if unknown:  # pragma: no cover - guards edits to the template tables
        raise AssertionError(f"template {template!r} uses unknown fields {sorted(unknown)}")
    return fields


_COMPILED = {
    name: tuple((t, _template_fields(t)) for t in templates)
    for name, templates in {**SERVICE_TEMPLATES, **TASK_TEMPLATES}.items()
}


# --------------------------------------------------------------------------- users


@dataclasses.dataclass
class _UserProfile:
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


def _cum(p: np.ndarray) -> List[float]:
    c = np.cumsum(p)
    c /= c[-1]
    return c.tolist()


def _pick(cum: List[float], u: float) -> int:
    return min(bisect.bisect_right(cum, u), len(cum) - 1)


def _make_profile(seed: int, index: int, services: Sequence[str], tasks: Sequence[str]) -> Tuple[_UserProfile, np.random.Generator]:
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
        noun_cum[t] = _cum(np_)
        brand_cum[t] = _cum(rng.dirichlet(np.full(len(topic.brands), 0.5)))
        entity_cum[t] = _cum(rng.dirichlet(np.full(len(topic.entities), 0.5)))

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
    profile = _UserProfile(
        index=index, user_id=user_id_for(index), interests=interests, weights=weights,
        topic_cum=_cum(np.asarray(weights)), noun_cum=noun_cum, brand_cum=brand_cum,
        entity_cum=entity_cum, noun_pref=noun_pref, services=chosen, counts=counts, tasks=in_tasks)
    return profile, rng


def _fill(fields: Iterable[str], u: List[float], topic: Topic, t: int, own: bool, p: _UserProfile) -> Dict[str, Any]:
    """Values for a template's fields. ``own``: use the user's preferences in topic ``t``."""
    out: Dict[str, Any] = {}
    for f in fields:
        x = u[_FIELD_COL[f]]
        if f == "brand":
            out[f] = topic.brands[_pick(p.brand_cum[t], x) if own else int(x * len(topic.brands))]
        elif f == "noun":
            out[f] = topic.nouns[_pick(p.noun_cum[t], x) if own else int(x * len(topic.nouns))]
        elif f == "entity":
            out[f] = topic.entities[_pick(p.entity_cum[t], x) if own else int(x * len(topic.entities))]
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


def _behaviors(p: _UserProfile, rng: np.random.Generator) -> List[Tuple[int, str, str]]:
    """User ``p``'s pre-training behaviours as (timestamp, service, item_text), oldest first."""
    rows: List[Tuple[int, str, str]] = []
    n_topics = len(TOPICS)
    for service in p.services:
        n = p.counts[service]
        u_all = rng.random((n, _N_COLS)).tolist()
        stamps = rng.integers(WINDOW_START, WINDOW_START + WINDOW_SECONDS, size=n).tolist()
        templates = _COMPILED[service]
        texts: List[str] = []
        for u in u_all:
            if texts and u[_C_REPEAT] < REPEAT_RATE:
                texts.append(texts[int(u[_C_REPEAT_PICK] * len(texts))])
                continue
            if u[_C_EMPTY] < EMPTY_RATE:
                texts.append(_EMPTY_TEXTS[int(u[_C_MESS] * len(_EMPTY_TEXTS))])
                continue
            own = u[_C_NOISE] >= NOISE_RATE
            t = p.interests[_pick(p.topic_cum, u[_C_TOPIC])] if own else int(u[_C_TOPIC] * n_topics)
            own = own and t in p.noun_cum
            template, fields = templates[int(u[_C_TEMPLATE] * len(templates))]
            text = template.format(**_fill(fields, u, TOPICS[t], t, own, p))
            if service == "search" and u[_C_CASE] < 0.6:
                text = text.lower()
            if u[_C_MESS] < MESSY_SPACE_RATE:
                text = ("  " + text) if u[_C_CASE] < 0.3 else text.replace(" ", "  ", 1) + " \t"
            texts.append(text)
        rows.extend(zip(stamps, [service] * n, texts))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


# ------------------------------------------------------------------ downstream


@dataclasses.dataclass
class _Catalogue:
    task: str
    item_ids: List[str]
    texts: List[str]
    topics: List[int]
    nouns: List[int]  # noun index (in its topic) the title mentions, -1 if none
    by_topic: Dict[int, List[int]]  # topic -> item positions, most popular first
    popularity: Dict[int, np.ndarray]  # topic -> weights aligned with by_topic
    global_cum: List[float]  # cumulative popularity over all items


def _make_catalogue(seed: int, task: str) -> _Catalogue:
    """``ITEMS_PER_TOPIC`` unique titles per topic for ``task``; depends on (seed, task) only."""
    rng = np.random.default_rng([seed, 1_000_003, KNOWN_TASKS.index(task)])
    templates = _COMPILED[task]
    texts: List[str] = []
    topics: List[int] = []
    nouns: List[int] = []
    seen = set()
    for t, topic in enumerate(TOPICS):
        made = tries = 0
        while made < ITEMS_PER_TOPIC:
            u = rng.random(_N_COLS).tolist()
            template, fields = templates[int(u[_C_TEMPLATE] * len(templates))]
            vals = _fill(fields, u, topic, t, False, None)  # type: ignore[arg-type]
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
    return _Catalogue(task, item_ids, texts, topics, nouns, by_topic, popularity, _cum(pop_all))


def _interactions(p: _UserProfile, seed: int, cat: _Catalogue) -> List[Tuple[int, int]]:
    """User ``p``'s clicks in ``cat`` as (timestamp, item position), oldest first, no repeats."""
    rng = np.random.default_rng([seed, p.index, 100 + KNOWN_TASKS.index(cat.task)])
    n = int(np.clip(np.round(rng.lognormal(math.log(6.0), 0.8)), 1, 60))
    # Within a topic: popularity times the user's liking of the noun in the title.
    cums = {}
    for t in p.interests:
        items = cat.by_topic[t]
        like = np.array([1.0 + 3.0 * p.noun_pref[t][cat.nouns[i]] if cat.nouns[i] >= 0 else 1.0 for i in items])
        cums[t] = _cum(cat.popularity[t] * like)
    u = rng.random((3 * n, 3)).tolist()
    picked: List[int] = []
    seen = set()
    for a, b, c in u:
        if len(picked) == n:
            break
        if a < DOWNSTREAM_TOPIC_RATE:
            t = p.interests[_pick(p.topic_cum, b)]
            item = cat.by_topic[t][_pick(cums[t], c)]
        else:
            item = _pick(cat.global_cum, c)
        if item not in seen:
            seen.add(item)
            picked.append(item)
    stamps = np.sort(rng.integers(WINDOW_START, WINDOW_START + WINDOW_SECONDS, size=len(picked))).tolist()
    return list(zip(stamps, picked))


# --------------------------------------------------------------------- writers


class _TableWriter:
    """Streams rows of fixed columns to ``path`` in one format; atomic on close.

    Rows go to ``<path>.tmp-<pid>`` in the same directory, which ``close()``
    renames to ``path`` and ``abort()`` removes.
    """

    def __init__(self, path: str, fmt: str, columns: Sequence[str], types: Dict[str, str]):
        self.path, self.fmt, self.columns, self.rows = path, fmt, tuple(columns), 0
        self.tmp = f"{path}.tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._pa = pa
            self._schema = pa.schema([(c, pa.int64() if types[c] == "int64" else pa.string()) for c in columns])
            self._writer = pq.ParquetWriter(self.tmp, self._schema)
        else:
            self._file = open(self.tmp, "w", encoding="utf-8", newline="")
            if fmt == "csv":
                self._csv = csv.writer(self._file, lineterminator="\n")
                self._csv.writerow(self.columns)

    def write(self, cols: Dict[str, list]) -> None:
        """Appends rows given as one equal-length list per column."""
        n = len(cols[self.columns[0]])
        if n == 0:
            return
        self.rows += n
        if self.fmt == "parquet":
            self._writer.write_table(self._pa.Table.from_pydict(cols, schema=self._schema))
        elif self.fmt == "csv":
            self._csv.writerows(zip(*(cols[c] for c in self.columns)))
        else:
            dumps, keys = json.dumps, self.columns
            self._file.writelines(
                dumps(dict(zip(keys, row)), ensure_ascii=False) + "\n" for row in zip(*(cols[c] for c in keys)))

    def close(self) -> None:
        if self.fmt == "parquet":
            self._writer.close()
        else:
            self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._writer.close() if self.fmt == "parquet" else self._file.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


_BEHAVIOR_TYPES = {"user_id": "string", "service": "string", "timestamp": "int64", "item_text": "string"}
_INTERACTION_TYPES = {"user_id": "string", "item_id": "string", "item_text": "string", "timestamp": "int64"}


def _jsonl(records: Iterable[Dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def shard_name(shard: int, num_shards: int, fmt: str) -> str:
    """``behaviors-00003-of-00010.csv``."""
    return f"behaviors-{shard:05d}-of-{num_shards:05d}.{fmt}"


# -------------------------------------------------------------------- generate


def _check_names(kind: str, names: Sequence[str], known: Sequence[str], allow_empty: bool) -> List[str]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    names = [n.strip() for n in names]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; choose from {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} listed twice: {names}")
    if not names and not allow_empty:
        raise ValueError(f"at least one of {kind} {list(known)} is needed")
    return sorted(names)


def generate(
    out_dir: str,
    users: int,
    seed: int = 0,
    fmt: str = "csv",
    services: Sequence[str] = ("news", "search", "shopping"),
    tasks: Sequence[str] = ("movies", "books"),
    users_per_shard: int = 50_000,
    progress: bool = False,
) -> Dict[str, Any]:
    """Writes a synthetic data set for ``users`` users under ``out_dir``; returns the manifest.

    Args:
      out_dir: output directory (created). An existing ``manifest.json`` is removed first,
        and behaviour shards / interaction files of an earlier run that this run does not
        rewrite are removed at the end, so the directory holds exactly one data set.
      users: number of users (>= 1), ids ``user_id_for(0 .. users-1)``.
      seed: base seed; same seed and arguments give byte-identical files.
      fmt: ``"csv"`` (header row, RFC 4180 quoting), ``"jsonl"`` (UTF-8, one object per
        line) or ``"parquet"`` (string / int64 columns).
      services: pre-training services, a subset of ``KNOWN_SERVICES`` (written sorted).
      tasks: downstream tasks, a subset of ``KNOWN_TASKS`` (may be empty).
      users_per_shard: users per behaviour shard (>= 1); does not change any row.
      progress: show a tqdm progress bar on stderr.

    Returns:
      The manifest dict also written to ``out_dir/manifest.json``: ``seed``, ``users``,
      ``format``, ``services``, ``tasks``, ``topics`` ([{"id", "name"}]), ``time_window``
      (unix seconds, ``[start, end)``), ``files`` ({relative path: data rows}) and
      ``stats`` (behaviours per service, cold-start / single-service / heavy users, ...).
    """
    if isinstance(users, bool) or not isinstance(users, (int, np.integer)) or users < 1:
        raise ValueError(f"users must be an integer >= 1, got {users!r}")
    if isinstance(users_per_shard, bool) or not isinstance(users_per_shard, (int, np.integer)) or users_per_shard < 1:
        raise ValueError(f"users_per_shard must be an integer >= 1, got {users_per_shard!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    services = _check_names("services", services, KNOWN_SERVICES, allow_empty=False)
    tasks = _check_names("tasks", tasks, KNOWN_TASKS, allow_empty=True)
    users, seed, users_per_shard = int(users), int(seed), int(users_per_shard)

    manifest_path = os.path.join(out_dir, "manifest.json")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # the directory is incomplete until the new one lands

    files: Dict[str, int] = {}
    catalogues = {task: _make_catalogue(seed, task) for task in tasks}
    for task, cat in catalogues.items():
        rel = f"downstream/{task}/catalogue.jsonl"
        write_text_atomic(os.path.join(out_dir, rel), _jsonl(
            {"item_id": i, "item_text": x, "topic": t} for i, x, t in zip(cat.item_ids, cat.texts, cat.topics)))
        files[rel] = len(cat.item_ids)

    num_shards = -(-users // users_per_shard)
    stats = {"behaviors_per_service": {s: 0 for s in services}, "users_with_behaviors": 0,
             "cold_start_users": 0, "single_service_users": 0, "heavy_users": 0, "max_behaviors_per_user": 0,
             "users_per_task": {t: 0 for t in tasks}}
    writers: List[_TableWriter] = []
    try:
        truth = _TableWriter(os.path.join(out_dir, "truth", "user_interests.jsonl"), "jsonl",
                             ("user_id", "interests", "weights", "services", "tasks"), {})
        writers.append(truth)
        inter = {task: _TableWriter(os.path.join(out_dir, "downstream", task, f"interactions.{fmt}"), fmt,
                                    INTERACTION_COLUMNS, _INTERACTION_TYPES) for task in tasks}
        writers.extend(inter.values())
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=users, unit="user", desc="clue synth")
        for shard in range(num_shards):
            rel = f"behaviors/{shard_name(shard, num_shards, fmt)}"
            bw = _TableWriter(os.path.join(out_dir, rel), fmt, BEHAVIOR_COLUMNS, _BEHAVIOR_TYPES)
            writers.append(bw)
            lo, hi = shard * users_per_shard, min(users, (shard + 1) * users_per_shard)
            # Batches start at multiples of BATCH_USERS inside the shard.
            for b_lo in range(lo, hi, BATCH_USERS):
                b_hi = min(hi, b_lo + BATCH_USERS)
                bcols: Dict[str, list] = {c: [] for c in BEHAVIOR_COLUMNS}
                icols = {task: {c: [] for c in INTERACTION_COLUMNS} for task in tasks}
                tcols: Dict[str, list] = {c: [] for c in truth.columns}
                for index in range(b_lo, b_hi):
                    p, rng = _make_profile(seed, index, services, tasks)
                    rows = _behaviors(p, rng)
                    uid = p.user_id
                    bcols["user_id"].extend([uid] * len(rows))
                    for ts, svc, text in rows:
                        bcols["timestamp"].append(ts)
                        bcols["service"].append(svc)
                        bcols["item_text"].append(text)
                    for task in p.tasks:
                        cat = catalogues[task]
                        clicks = _interactions(p, seed, cat)
                        ic = icols[task]
                        ic["user_id"].extend([uid] * len(clicks))
                        for ts, item in clicks:
                            ic["item_id"].append(cat.item_ids[item])
                            ic["item_text"].append(cat.texts[item])
                            ic["timestamp"].append(ts)
                        stats["users_per_task"][task] += 1
                    tcols["user_id"].append(uid)
                    tcols["interests"].append(p.interests)
                    tcols["weights"].append(p.weights)
                    tcols["services"].append(p.services)
                    tcols["tasks"].append(p.tasks)
                    for s, n in p.counts.items():
                        stats["behaviors_per_service"][s] += n
                    stats["users_with_behaviors"] += bool(p.services)
                    stats["cold_start_users"] += not p.services
                    stats["single_service_users"] += len(p.services) == 1
                    stats["heavy_users"] += any(n >= 200 for n in p.counts.values())
                    stats["max_behaviors_per_user"] = max(stats["max_behaviors_per_user"], len(rows))
                bw.write(bcols)
                truth.write(tcols)
                for task in tasks:
                    inter[task].write(icols[task])
                if bar is not None:
                    bar.update(b_hi - b_lo)
            bw.close()
            writers.remove(bw)
            files[rel] = bw.rows
        for task in tasks:
            inter[task].close()
            writers.remove(inter[task])
            files[f"downstream/{task}/interactions.{fmt}"] = inter[task].rows
        truth.close()
        writers.remove(truth)
        files["truth/user_interests.jsonl"] = truth.rows
        if bar is not None:
            bar.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise

    _remove_stale(out_dir, files)
    manifest = {
        "generator": "clue_keras.synth",
        "manifest_version": MANIFEST_VERSION,
        "seed": seed,
        "users": users,
        "format": fmt,
        "services": services,
        "tasks": tasks,
        "users_per_shard": users_per_shard,
        "num_shards": num_shards,
        "time_window": [WINDOW_START, WINDOW_START + WINDOW_SECONDS],
        "topics": [{"id": i, "name": t.name} for i, t in enumerate(TOPICS)],
        "files": dict(sorted(files.items())),
        "stats": stats,
    }
    write_text_atomic(manifest_path, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return manifest


def _remove_stale(out_dir: str, keep: Dict[str, int]) -> None:
    """Removes behaviour shards and interaction files that an earlier run left behind."""
    patterns = ["behaviors/behaviors-*-of-*.*", "downstream/*/interactions.*"]
    for pattern in patterns:
        for path in glob.glob(os.path.join(out_dir, pattern)):
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            if rel not in keep and rel.rsplit(".", 1)[-1] in FORMATS:
                os.remove(path)


# ---------------------------------------------------------------------- readers


def load_manifest(data_dir: str) -> Dict[str, Any]:
    """``data_dir/manifest.json`` as a dict (FileNotFoundError names the path)."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no manifest (not a `clue synth` directory, or still being written)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _ReadError(ValueError):
    """A ValueError that already names the file at fault."""


def read_table(path: str, columns: Sequence[str], int_columns: Sequence[str] = ("timestamp",)):
    """Reads one CSV / JSONL / Parquet file (by extension) into a pandas DataFrame.

    Returns exactly ``columns`` in that order: ``int_columns`` as int64, the rest as
    Python ``str`` (empty strings kept, never NaN). Raises ValueError naming ``path``
    (and the line or column) on a parse error, a missing column or a bad value.
    """
    import pandas as pd

    ext = path.rsplit(".", 1)[-1].lower()
    try:
        if ext == "csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
        elif ext in ("jsonl", "json"):
            records = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise _ReadError(f"{path}:{lineno}: not valid JSON: {e}") from None
                    if not isinstance(rec, dict):
                        raise _ReadError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
                    records.append(rec)
            df = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=list(columns))
        elif ext == "parquet":
            import pyarrow.parquet as pq

            df = pq.read_table(path).to_pandas()
        else:
            raise _ReadError(f"{path}: unknown file type {ext!r}; expected one of {list(FORMATS)}")
    except _ReadError:
        raise
    except Exception as e:  # parser errors of pandas / pyarrow / codecs
        raise ValueError(f"{path}: cannot parse as {ext}: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    df = df[list(columns)].copy()
    for c in columns:
        if c in int_columns:
            try:
                df[c] = pd.to_numeric(df[c], errors="raise").astype("int64")
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}: column {c!r} must hold integers: {e}") from None
        else:
            if df[c].isna().any():
                raise ValueError(f"{path}: column {c!r} has missing values (row {int(df[c].isna().idxmax())})")
            df[c] = df[c].astype(str)
    return df.reset_index(drop=True)


def behavior_files(data_dir: str) -> List[str]:
    """Behaviour shard paths of ``data_dir``: from the manifest when there is one, else
    every ``behaviors/behaviors-*-of-*.{csv,jsonl,parquet}``; sorted."""
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        rels = [r for r in load_manifest(data_dir)["files"] if r.startswith("behaviors/")]
        return [os.path.join(data_dir, r) for r in sorted(rels)]
    folder = os.path.join(data_dir, "behaviors")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no behaviors/ folder in {data_dir!r}")
    paths = sorted(p for ext in FORMATS for p in glob.glob(os.path.join(folder, f"behaviors-*-of-*.{ext}")))
    if not paths:
        raise FileNotFoundError(f"{folder}: no behaviors-*-of-*.{{{','.join(FORMATS)}}} files")
    return paths


def read_behaviors(data_dir: str):
    """All pre-training behaviours of ``data_dir`` as one DataFrame.

    Columns: ``user_id`` str, ``service`` str, ``timestamp`` int64 (unix seconds),
    ``item_text`` str, in file order. For tests and small runs: it loads everything.
    """
    import pandas as pd

    frames = [read_table(p, BEHAVIOR_COLUMNS) for p in behavior_files(data_dir)]
    return pd.concat(frames, ignore_index=True)


def _task_file(data_dir: str, task: str, stem: str) -> str:
    folder = os.path.join(data_dir, "downstream", task)
    if not os.path.isdir(folder):
        have = sorted(os.listdir(os.path.join(data_dir, "downstream"))) if os.path.isdir(
            os.path.join(data_dir, "downstream")) else []
        raise FileNotFoundError(f"{folder}: no downstream task {task!r}; tasks present: {have}")
    for ext in FORMATS:
        path = os.path.join(folder, f"{stem}.{ext}")
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{folder}: no {stem}.{{{','.join(FORMATS)}}}")


def read_interactions(data_dir: str, task: str):
    """Downstream interactions of ``task``: ``user_id`` str, ``item_id`` str,
    ``item_text`` str, ``timestamp`` int64; each user's rows oldest first."""
    return read_table(_task_file(data_dir, task, "interactions"), INTERACTION_COLUMNS)


def read_catalogue(data_dir: str, task: str):
    """Catalogue of ``task``: ``item_id`` str, ``item_text`` str, ``topic`` int64 (topic id)."""
    return read_table(_task_file(data_dir, task, "catalogue"), CATALOGUE_COLUMNS, int_columns=("topic",))


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
