"""Names, sizes and rates of the synthetic data (see the `clue_synth` docstring)."""

from __future__ import annotations

from typing import Tuple

KNOWN_SERVICES: Tuple[str, ...] = ("news", "search", "shopping")
KNOWN_TASKS: Tuple[str, ...] = ("movies", "books", "webtoon")
#: Formats `generate` writes (a subset of `clue_keras.data.formats.FORMATS`).
OUTPUT_FORMATS: Tuple[str, ...] = ("csv", "jsonl", "parquet")

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
