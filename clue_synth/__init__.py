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

Read the tables with `clue_keras.data.tables` (``read_behaviors``,
``read_interactions``, ``read_catalogue``) like any data set; `clue_synth.truth`
reads what only the generator knows (manifest, users' interests).

How the data is made
--------------------
* `clue_synth.vocabulary` (``topics.json``): ``len(TOPICS)`` (24) topics, each
  with its own nouns, brands, named entities and Korean words. Every service
  renders the same vocabulary through its own templates (shopping: product
  titles, search: queries, news: headlines; downstream: movie / book / webtoon
  titles), mixed with generic words shared by all topics.
* `clue_synth.users`: each user has 1-3 interest topics and, inside each, a
  preference over its words (brand loyalty), shared by all services and tasks,
  so a user's logs in one service predict their logs in another and their
  downstream clicks (`clue_synth.downstream`). Some behaviours are noise.
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
Catalogues depend only on ``(seed, task)``. Files are written by
`clue_synth.generator.generate` (atomically, ``manifest.json`` last).
"""

from clue_synth.generator import generate
from clue_synth.settings import ITEMS_PER_TOPIC, KNOWN_SERVICES, KNOWN_TASKS, OUTPUT_FORMATS
from clue_synth.truth import load_manifest, read_user_interests
from clue_synth.users import user_id_for
from clue_synth.vocabulary import TOPICS

__all__ = ["generate", "load_manifest", "read_user_interests", "user_id_for", "TOPICS",
           "ITEMS_PER_TOPIC", "KNOWN_SERVICES", "KNOWN_TASKS", "OUTPUT_FORMATS"]
