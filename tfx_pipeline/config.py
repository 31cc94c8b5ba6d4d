"""`PipelineConfig`: everything `create_pipeline` needs, as one typed value.

Runners fill in paths and runner options; the data and model knobs have
defaults that match the ``tiny`` preset so a local run finishes in minutes.
Nothing here imports TFX, so the CLI can build a config cheaply.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any, Dict, Optional, Tuple

from clue_keras.config import (LOCAL_TRAIN, PRECISIONS, ModelConfig, TrainConfig, get_preset,
                               model_config_from_dict, to_dict, train_config_from_dict)
from clue_keras.text import DEFAULT_MAX_TEXT_BYTES
from clue_keras.data.formats import FORMATS, detect_format  # noqa: F401  (re-exported)
from clue_keras.data.formats import format_of
from clue_keras.data.direct_runner import local_beam_args

#: Input formats the pipeline's ExampleGen understands, by file extension.
FORMAT_EXTENSIONS = FORMATS

#: The downstream task evaluated by default: ``<data>/downstream/<DEFAULT_EVAL_TASK>``.
DEFAULT_EVAL_TASK = "movies"

#: Model names a server gives the encoder and the user-id lookup model (`clue serve`,
#: ``models.config``, the run summary's serve commands).
ENCODER_MODEL_NAME = "clue"
LOOKUP_MODEL_NAME = "clue_user_lookup"
#: The lookup model's serving directory, by default: the encoder's, with this suffix.
LOOKUP_DIR_SUFFIX = "_user_lookup"

#: Beam options used when the caller gives none: the DirectRunner without its
#: Prism attempt (`clue_keras.data.direct_runner`) in multi-processing mode with
#: one worker per CPU core (0 = auto).
DEFAULT_BEAM_ARGS: Tuple[str, ...] = tuple(local_beam_args("multi_processing", 0))


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """What the Trainer's ``run_fn`` needs, as carried in ``custom_config``."""

    preset: str
    model: ModelConfig
    train: TrainConfig
    precision: str = "auto"
    cpu_replicas: int = 1

    def to_custom_config(self) -> Dict[str, Any]:
        return {"preset": self.preset, "model": to_dict(self.model),
                "train": to_dict(self.train), "precision": self.precision,
                "cpu_replicas": self.cpu_replicas}

    @classmethod
    def from_custom_config(cls, custom_config: Dict[str, Any]) -> "TrainerSettings":
        """Inverse of `to_custom_config`; names the key at fault."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(custom_config) - known
        if unknown:
            raise ValueError(f"unknown Trainer custom_config keys {sorted(unknown)}; "
                             f"known: {sorted(known)}")
        missing = {"preset", "model", "train"} - set(custom_config)
        if missing:
            raise ValueError(f"Trainer custom_config lacks {sorted(missing)} "
                             "(build it with PipelineConfig.trainer_custom_config())")
        return cls(preset=str(custom_config["preset"]),
                   model=model_config_from_dict(dict(custom_config["model"])),
                   train=train_config_from_dict(dict(custom_config["train"])),
                   precision=str(custom_config.get("precision", "auto")),
                   cpu_replicas=int(custom_config.get("cpu_replicas", 1)))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Configuration of the CLUE TFX pipeline: the one typed value every runner,
    the CLI and the Trainer read. Defaults live here (and in `clue_keras.config`
    for the model and training), and the CLI takes its defaults from here.

    Paths may be local or any filesystem TFX understands (``gs://`` ...).

    Attributes:
      pipeline_name: TFX pipeline name (MLMD context, KFP pipeline name).
      pipeline_root: where every component writes its output artifacts.
      data_root: directory of behaviour-log files (``user_id, service,
        timestamp, item_text``); every file matching ``file_pattern`` is read.
      data_format: one of ``csv``, ``jsonl``, ``parquet``, ``tfrecord``
        (gzipped or plain tf.Example records).
      serving_model_dir: Pusher destination; TF Serving's model base path.
      metadata_path: SQLite MLMD file for local runs; None on Kubeflow (the
        orchestrator supplies the store).
      preset: name of a `clue_keras.config.PRESETS` entry; resolved once into
        ``model`` (S = ``max_items``, L = ``max_tokens``, BPE vocabulary size).
      model: the architecture; None (the default) means ``get_preset(preset)``.
      train: optimisation (`clue_keras.config.TrainConfig`; default
        `LOCAL_TRAIN`: 400 steps, batch 64, lr 2e-3, checkpoint at the end).
        ``train.epochs`` set: the Trainer trains that many passes over the
        train split's users with >= ``train.min_services`` services instead of
        ``train_steps``; held-out loss every ``train.eval_every`` steps (0: a
        tenth of the steps), early stop after ``train.patience`` evaluations
        without improvement (0: never), the best step's weights exported.
      precision: ``auto``, ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
      cpu_replicas: MirroredStrategy over this many logical CPU devices when
        there is no GPU (1 = the default strategy).
      min_items_per_user: activity threshold: users with fewer distinct items
        (after dedup and truncation, over all services) are dropped.
      min_services_per_user: users active in fewer services are dropped.
      eval_percent, test_percent: share of users (by a hash of ``user_id``)
        put in the eval and test splits; the rest train.
      bpe_sample_size: at most this many train-split item texts are sampled
        to train the byte-level BPE.
      max_text_bytes: item texts are cut to this many UTF-8 bytes (at a
        character boundary) before tokenisation, in preprocessing and, through
        the vocabulary's ``clue_vocab.json``, in the serving graph; 0: no cap.
      num_shards: output shards per split; 0 lets the Beam runner decide.
      beam_pipeline_args: Beam options for every Beam-powered component
        (ExampleGen, StatisticsGen, BehaviorPreprocess ...). The default is the
        DirectRunner in multi-processing mode; pass e.g. ``--runner=FlinkRunner
        --flink_master=HOST:8081`` or ``--runner=DataflowRunner --project=P
        --region=R --temp_location=gs://...`` to scale out with the same code.
      preprocess_beam_args: Beam options for BehaviorPreprocess only, after
        ``beam_pipeline_args`` (the later value of an option wins), e.g. a
        dask.distributed cluster for the one graph written for it (README
        "Beam engines") while TFX's components stay on the DirectRunner.
      enable_cache: reuse outputs of executions whose inputs and properties are
        unchanged (MLMD-based caching).
      schema_path: a curated schema (``schema.pbtxt``, TFX's text format) that
        ExampleValidator checks the logs against (ImportSchemaGen). None infers
        one from this run's statistics (SchemaGen), which can catch nothing
        that the same statistics do not already show; `clue run` keeps the
        first inferred schema in ``ROOT/schema/`` and validates later runs
        against it.
      evaluate: add the ClueEvaluator (downstream evaluation, blessing) and
        the Pusher. False trains only and never pushes (no blessing is faked).
      eval_task_path: the downstream task's interactions: a file (any name, any
        format of `FORMAT_EXTENSIONS`) or a directory holding
        ``interactions.<fmt>`` (read as ``data_format``); default
        ``<data>/downstream/movies`` (`evaluation_task_path`, the `clue synth`
        layout). The pipeline reads it with an ExampleGen (``TaskExampleGen``),
        so the task is an artifact; `clue run` resolves a directory to its file.
      eval_catalogue_path: the task's catalogue file (``item_id``, optional
        ``item_text``, ``topic``), read by a second ExampleGen
        (``TaskCatalogueExampleGen``); None: the catalogue is the distinct items
        of the interactions with their newest text. `clue run` sets it to the
        task directory's ``catalogue.<fmt>`` when there is one.
      eval_epochs: training epochs of every downstream model.
      eval_seed: seed of the downstream split, negatives and initialisation.
      margin_over_toppop: the model is blessed only if MRR of U-MLP on CLUE
        features exceeds TopPop's by more than this; None skips the check.
      margin_over_untrained: ... and exceeds U-MLP on untrained-encoder
        features by more than this; None skips the check.
      blessing_confidence: "exceeds" means the lower bound of the one-sided
        paired bootstrap interval of the per-positive MRR difference, at this
        confidence, is above the margin (in (0.5, 1); default 0.95).
      eval_sequence_models: also train T-UBM (BST) and Hybrid (slower).
      export_lookup: with ``evaluate``, add EmbeddingExport (every kept user's
        embedding, computed with Beam from BehaviorPreprocess's records, and the
        user-id -> embedding lookup SavedModel) and a second Pusher,
        ``LookupPusher``, gated by the same blessing, that pushes it to
        ``lookup_serving_model_dir``.
      lookup_serving_dir: where ``LookupPusher`` pushes the lookup model (TF
        Serving's base path of model `LOOKUP_MODEL_NAME`); None:
        ``<serving_model_dir>_user_lookup`` (`lookup_serving_model_dir`).
    """

    pipeline_root: str
    data_root: str
    serving_model_dir: str
    pipeline_name: str = "clue"
    data_format: str = "csv"
    file_pattern: str = "*"
    metadata_path: Optional[str] = None
    preset: str = "tiny"
    model: Optional[ModelConfig] = None
    train: TrainConfig = LOCAL_TRAIN
    precision: str = "auto"
    cpu_replicas: int = 1
    min_items_per_user: int = 2
    min_services_per_user: int = 1
    eval_percent: int = 10
    test_percent: int = 10
    bpe_sample_size: int = 200_000
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    num_shards: int = 0
    beam_pipeline_args: Tuple[str, ...] = DEFAULT_BEAM_ARGS
    preprocess_beam_args: Tuple[str, ...] = ()
    enable_cache: bool = True
    schema_path: Optional[str] = None
    evaluate: bool = True
    eval_task_path: Optional[str] = None
    eval_catalogue_path: Optional[str] = None
    eval_epochs: int = 5
    eval_seed: int = 0
    margin_over_toppop: Optional[float] = 0.0
    margin_over_untrained: Optional[float] = 0.0
    blessing_confidence: float = 0.95
    eval_sequence_models: bool = True
    export_lookup: bool = True
    lookup_serving_dir: Optional[str] = None

    def __post_init__(self):
        if self.data_format not in FORMAT_EXTENSIONS:
            raise ValueError(f"data_format {self.data_format!r} is not one of "
                             f"{sorted(FORMAT_EXTENSIONS)}")
        if not (0 <= self.eval_percent and 0 <= self.test_percent
                and self.eval_percent + self.test_percent < 100):
            raise ValueError(f"eval_percent={self.eval_percent} and test_percent="
                             f"{self.test_percent} must be >= 0 and sum to < 100")
        for name in ("min_items_per_user", "min_services_per_user", "bpe_sample_size",
                     "eval_epochs", "cpu_replicas"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_steps", "batch_size"):
            if getattr(self.train, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self.train, name)}")
        for name in ("eval_every", "patience", "checkpoint_every"):
            if getattr(self.train, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self.train, name)}")
        if self.train.epochs is not None and not self.train.epochs > 0:
            raise ValueError(f"train.epochs must be > 0, got {self.train.epochs}")
        if self.train.epochs is None and self.train.checkpoint_every \
                and self.train.train_steps % self.train.checkpoint_every:
            raise ValueError(f"train_steps ({self.train.train_steps}) must be a multiple of "
                             f"checkpoint_every ({self.train.checkpoint_every})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.lookup_serving_model_dir.rstrip("/") == self.serving_model_dir.rstrip("/"):
            raise ValueError(f"lookup_serving_dir must differ from serving_model_dir "
                             f"({self.serving_model_dir}): each model needs its own base path")
        if self.model is None:  # the preset is resolved here, once
            object.__setattr__(self, "model", get_preset(self.preset))
        # Tuples keep the dataclass hashable and immutable when given lists.
        object.__setattr__(self, "beam_pipeline_args", tuple(self.beam_pipeline_args))
        object.__setattr__(self, "preprocess_beam_args", tuple(self.preprocess_beam_args))

    def replace(self, **kw) -> "PipelineConfig":
        if "preset" in kw and "model" not in kw:
            kw["model"] = None  # re-resolve the new preset
        return dataclasses.replace(self, **kw)

    def trainer_custom_config(self) -> Dict[str, Any]:
        """The Trainer's ``custom_config``: model, training and runtime settings,
        serialised once here and read back by `TrainerSettings.from_custom_config`."""
        return TrainerSettings(preset=self.preset, model=self.model, train=self.train,
                               precision=self.precision,
                               cpu_replicas=self.cpu_replicas).to_custom_config()

    @property
    def lookup_serving_model_dir(self) -> str:
        """``lookup_serving_dir``, else ``<serving_model_dir>_user_lookup`` (a sibling of
        the encoder's serving directory, on the same filesystem)."""
        return self.lookup_serving_dir or self.serving_model_dir.rstrip("/") + LOOKUP_DIR_SUFFIX

    @property
    def dataset_root(self) -> str:
        """The `clue synth`-style directory around ``data_root``: its parent when
        ``data_root`` is a ``behaviors/`` folder, else ``data_root`` itself."""
        root = self.data_root.rstrip("/")
        return posixpath.dirname(root) if posixpath.basename(root) == "behaviors" else root

    @property
    def evaluation_task_path(self) -> str:
        """``eval_task_path``, else ``<dataset_root>/downstream/<DEFAULT_EVAL_TASK>``."""
        return self.eval_task_path or posixpath.join(self.dataset_root, "downstream",
                                                     DEFAULT_EVAL_TASK)

    @property
    def evaluation_task_name(self) -> str:
        """The task's name in the results: its directory's name, or its file's name up
        to the first dot, or the folder of an ``interactions.<fmt>`` file
        (``.../downstream/movies[/interactions.csv]`` -> ``movies``)."""
        path = self.evaluation_task_path.rstrip("/")
        name = posixpath.basename(path)
        if not _is_table_file(name):
            return name
        stem = name.split(".")[0]
        if stem == "interactions":
            return posixpath.basename(posixpath.dirname(path)) or stem
        return stem

    @property
    def evaluation_task_input(self) -> Tuple[str, str, str]:
        """``(input_base, file_pattern, format)`` of the task's ExampleGen, from the path
        alone (no file is touched): a path with a table extension is the file itself,
        anything else a directory whose ``interactions.*`` is read as ``data_format``."""
        return _table_input(self.evaluation_task_path, "interactions.*", self.data_format)

    @property
    def evaluation_catalogue_input(self) -> Optional[Tuple[str, str, str]]:
        """``(input_base, file_pattern, format)`` of the catalogue's ExampleGen, or None."""
        if not self.eval_catalogue_path:
            return None
        return _table_input(self.eval_catalogue_path, "catalogue.*", "jsonl")


def _is_table_file(path: str) -> bool:
    try:
        format_of(path)
        return True
    except ValueError:
        return False


def _table_input(path: str, pattern: str, default_format: str) -> Tuple[str, str, str]:
    """A table file -> (its folder, its name, its format); a directory -> (it, pattern, default)."""
    if not _is_table_file(path):  # no table extension: a directory
        return path.rstrip("/"), pattern, default_format
    return posixpath.dirname(path), posixpath.basename(path), format_of(path)
