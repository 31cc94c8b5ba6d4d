"""The generator's words and templates, loaded from ``topics.json`` (package data).

``len(TOPICS)`` (24) topics, each with its own nouns, brands, named entities
and Korean words; words shared by every topic (sizes, colours, "sale", years,
...) that carry no topic signal; and per service / downstream task the
templates that render them (shopping: product titles, search: queries, news:
headlines; movies / books / webtoon: titles). The generator indexes these lists,
so editing the file changes the generated data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from typing import Dict, Tuple

VOCABULARY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "topics.json")


@dataclasses.dataclass(frozen=True)
class Topic:
    """One latent interest and its vocabulary (shared by all services)."""

    name: str
    nouns: Tuple[str, ...]
    brands: Tuple[str, ...]
    entities: Tuple[str, ...]
    korean: Tuple[str, ...]


def _load(path: str = VOCABULARY_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_DATA = _load()
TOPICS: Tuple[Topic, ...] = tuple(
    Topic(t["name"], *(tuple(t[k]) for k in ("nouns", "brands", "entities", "korean")))
    for t in _DATA["topics"])
_WORDS = {k: tuple(v) for k, v in _DATA["shared_words"].items()}
# Words shared by every topic: they carry no topic signal.
SPECS = _WORDS["specs"]
GENERIC = _WORDS["generic"]
MONTHS = _WORDS["months"]
SEASONS = _WORDS["seasons"]
VERDICTS = _WORDS["verdicts"]
ADJECTIVES = _WORDS["adjectives"]
GENRES = _WORDS["genres"]
EDITIONS = _WORDS["editions"]

# Templates per service and per downstream task; {field}s are filled per row (see ROW_FIELDS).
SERVICE_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    k: tuple(v) for k, v in _DATA["service_templates"].items()}
TASK_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    k: tuple(v) for k, v in _DATA["task_templates"].items()}

# One uniform column per field, so a row needs one fixed-size draw.
ROW_FIELDS = ("brand", "brand2", "noun", "noun2", "entity", "entity2", "ko", "spec", "spec2",
              "generic", "num", "pct", "year", "month", "season", "verdict", "adj", "genre", "edition")
FIELD_COL = {f: i for i, f in enumerate(ROW_FIELDS)}
# Control columns after the fields.
C_TOPIC, C_NOISE, C_TEMPLATE, C_REPEAT, C_REPEAT_PICK, C_EMPTY, C_MESS, C_CASE = range(
    len(ROW_FIELDS), len(ROW_FIELDS) + 8)
N_COLS = len(ROW_FIELDS) + 8


def _template_fields(template: str) -> Tuple[str, ...]:
    fields = tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)
    unknown = set(fields) - set(ROW_FIELDS)
    if unknown:  # pragma: no cover - guards edits to the template tables
        raise AssertionError(f"template {template!r} uses unknown fields {sorted(unknown)}")
    return fields


#: name -> ((template, its fields), ...) for every service and task.
COMPILED = {
    name: tuple((t, _template_fields(t)) for t in templates)
    for name, templates in {**SERVICE_TEMPLATES, **TASK_TEMPLATES}.items()
}
