"""Run configuration: one validated pydantic model per `retrain` run, loaded from a YAML preset.

    cfg = load_config("deployments/presets/tiny-cpu.yaml", overrides=["train.steps=50"])

Unknown keys and bad values raise `ConfigError` with a one-line message naming the key
(``train.steps: Input should be greater than 0``), before any model is built. Strategy settings
(`train.settings`) are checked against the chosen strategy's own settings model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from tuneforge.data_schemas import FIELDS, SCHEMA_NAMES
from tuneforge.lineage import BENCH
from tuneforge.models import TinyModelConfig


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the file and the key."""


Spec = TypeVar("Spec", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


logger = logging.getLogger(__name__)

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

SHAPES_TRAINING = "shapes_training"  # the mark's key in a field's json_schema_extra
OMIT_AT_DEFAULT = "fingerprint_omits_default"  # shaping_when_set's mark


def not_shaping(default: Any = PydanticUndefined, **field_kwargs: Any) -> Any:
    """`Field(default, **field_kwargs)` for a setting that does not change what a run computes:
    how often to log or checkpoint, retries, threads, how many processes share a batch, padded
    or padding-free batches (the same training in distribution: only float rounding or which
    dropout masks get drawn differ), and what the run is called, where its data and outputs
    live, whether it was forced. Such fields are left out of `RunConfig.fingerprint()` and of
    a checkpoint's resume key (`TrainConfig.shaping_settings`); the JSON schema shows the mark
    as `shapes_training: false`."""
    return Field(default, **field_kwargs, json_schema_extra={SHAPES_TRAINING: False})


def shaping_when_set(default: Any = PydanticUndefined, **field_kwargs: Any) -> Any:
    """`Field(default, **field_kwargs)` for a setting added after versions were registered:
    it shapes training, but at its default it is left out of `RunConfig.fingerprint()`, so a
    config that does not use it hashes as it did before it existed (an unchanged retrain is
    still recognised as unchanged)."""
    return Field(default, **field_kwargs, json_schema_extra={OMIT_AT_DEFAULT: True})


def _omit_defaults(config: BaseModel, dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` (of `config`) without the `shaping_when_set` fields that hold their default,
    in every nested section."""
    for name, field in type(config).model_fields.items():
        key = field.alias or name
        value = getattr(config, name)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if key not in dump:
            continue
        if extra.get(OMIT_AT_DEFAULT) and value == field.get_default(call_default_factory=True):
            del dump[key]
        elif isinstance(value, BaseModel) and isinstance(dump[key], dict):
            dump[key] = _omit_defaults(value, dump[key])
    return dump


def fields_not_shaping(model: type[BaseModel]) -> set[str]:
    """The names of `model`'s fields declared with `not_shaping` (not its nested sections')."""
    return {
        name
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict)
        and field.json_schema_extra.get(SHAPES_TRAINING) is False
    }


def _not_shaping_exclude(model: type[BaseModel]) -> dict[str, Any]:
    """`model_dump`'s `exclude` for everything in `model` that does not shape training: its
    marked fields whole, and the marked fields of its nested sections, recursively."""
    exclude: dict[str, Any] = dict.fromkeys(fields_not_shaping(model), True)
    for name, field in model.model_fields.items():
        section = field.annotation
        if name in exclude or not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        inner = _not_shaping_exclude(section)
        if inner:
            exclude[name] = inner
    return exclude


# The names data_schemas.py defines, as the types config fields check against.
DatasetSchema = Literal[SCHEMA_NAMES]  # type: ignore[valid-type]
DataField = Literal[FIELDS]  # type: ignore[valid-type]


class DataConfig(Strict):
    # `schema` is the key in YAML and --set; the attribute is `schema_` (pydantic's BaseModel
    # has a `schema` method).
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True
    )

    path: str = not_shaping(
        min_length=1,
        description=(
            "The data to train on: a local file (.jsonl, .json, .csv, .parquet), a Hugging Face "
            "datasets name (hf:NAME, or any name with format hf) or a saved dataset directory. "
            "Relative paths are resolved against the working directory. Where the data lives "
            "is not part of the config fingerprint: the data's content has its own."
        ),
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = Field(
        "auto",
        description=(
            "How path is read: jsonl, json, csv, parquet, or hf (a Hugging Face datasets name "
            "or a saved dataset directory). auto: hf for an hf: prefix or a directory, else "
            "the file's extension."
        ),
    )
    hf_split: str = Field(
        "train",
        min_length=1,
        description="The split of a Hugging Face dataset to read (format hf); files have none.",
    )
    hf_streaming: bool = not_shaping(
        False,
        description=(
            "Read a Hugging Face dataset as a stream (format hf): rows are copied into the run "
            "a batch at a time, never downloaded or held whole first. For datasets larger than "
            "the disk's cache or memory; a saved dataset directory is memory-mapped either way."
        ),
    )
    schema_: DatasetSchema = Field(
        "auto",
        alias="schema",
        description=(
            "Which columns hold what (tuneforge/data_schemas.py): alpaca, dolly, sharegpt, "
            "openai, prompt_completion, text, preference (prompt/chosen/rejected, for dpo, "
            "simpo) or feedback (prompt/completion/label, for kto); auto recognises them from "
            "the columns and says which it used."
        ),
    )
    columns: dict[DataField, str] = Field(
        {},
        description=(
            "tuneforge field -> the file's column, on top of the schema's own names, e.g. "
            "{input: context, output: response}."
        ),
    )
    ignore_columns: list[str] = Field(
        [],
        description=(
            "Columns the file has that training should not read. Any other column the schema "
            "and mapping leave unread makes the file unusable: nothing is dropped unasked."
        ),
    )
    max_chars: int = Field(
        2000,
        gt=0,
        le=1_000_000,
        description=(
            "Rows with a field longer than this many characters are quarantined rather than "
            "truncated: silent truncation would train on answers cut in half. The upper bound "
            "only catches a typo (an extra zero or three): no instruction example is a million "
            "characters long."
        ),
    )
    max_rejected_fraction: Fraction = Field(
        0.05,
        description=(
            "Fail the run when more than this share of rows (0 to 1) is rejected: a few bad "
            "rows are normal, a flood means the upstream export broke and training on the rest "
            "would mislead."
        ),
    )
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.2,
        description=(
            "Share of the (held-in) rows kept for evaluation, between 0 and 1. The split "
            "hashes each row's content with seed, so a row stays on its side as the dataset "
            "grows between retrains."
        ),
    )
    holdout_tasks: list[str] = Field(
        [],
        description=(
            "Task families (the rows' task field) kept out of training entirely and evaluated "
            "only, reported as held_out against held_in: measures whether instruction tuning "
            "generalises to instructions the model never saw. Empty: every family trains."
        ),
    )
    seed: int = Field(
        0,
        description=(
            "Seed of the hash that splits rows into train and eval: another seed puts other "
            "rows on each side."
        ),
    )
    replay: Fraction = shaping_when_set(
        0.0,
        description=(
            "Share of the parent version's training rows (model.source models:/NAME/VERSION) "
            "mixed into this run's training split, found through the parent's lineage (its "
            "recorded data config, refused if its data changed since): a remedy for forgetting "
            "what the parent could do while adapting it to narrower data. Costs training steps "
            "on old rows; 0: none."
        ),
    )


class ModelConfig(Strict):
    source: str = Field(
        "tiny",
        min_length=1,
        description=(
            "The base model: tiny (built locally, shaped by model.tiny), a local checkpoint "
            "directory, a Hugging Face hub id, or a registry URI such as models:/NAME@champion "
            "(transfer learning from the current champion)."
        ),
    )
    revision: str | None = Field(
        None,
        description=(
            "The revision (branch, tag or commit) of a hub id source; null: its default "
            "branch. Other sources ignore it."
        ),
    )
    trust_remote_code: bool = Field(
        False,
        strict=True,
        description=(
            "Run the Python code shipped with the checkpoint (custom model classes). Off "
            "unless you trust the checkpoint's author. A YAML boolean only (true or false): a "
            "security switch is not guessed from a string."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description=(
            "What the base's weights load in (auto: the checkpoint's own torch_dtype). Frozen "
            "weights stay in it: a LoRA base in bfloat16 takes half the memory of float32. "
            "Trained weights are always float32 (full and instruction train every weight, so "
            "their copy is float32 whatever this says; AdamW on bfloat16 weights loses the "
            "updates smaller than bfloat16's precision), adapters too. Evaluation and the "
            "registered model compute in it. bfloat16 needs bf16 units to be fast (GPUs since "
            "Ampere, CPUs with AVX512-BF16/AMX); float16 overflows more easily."
        ),
    )
    tiny: TinyModelConfig = Field(
        TinyModelConfig(),
        description="The shape of the model built when source is tiny; other sources ignore it.",
    )


class TrainConfig(Strict):
    strategy: str = Field(
        "full",
        description=(
            "The tuning strategy: a name registered under the tuneforge.strategies entry-point "
            "group (tuneforge strategies lists them), e.g. full, instruction, lora or pretrain."
        ),
    )
    settings: dict[str, Any] = Field(
        {},
        description=(
            "The strategy's own settings, validated by its settings model. Switching the "
            "preset's strategy with --set starts from the new strategy's defaults (the "
            "preset's settings were the other strategy's); settings given with --set are kept."
        ),
    )
    steps: int = Field(300, gt=0, description="Optimizer steps, each on one batch.")
    batch_size: int = Field(
        16,
        gt=0,
        description=(
            "Examples per optimizer step: the global batch, split evenly across all training "
            "processes (num_processes x num_nodes)."
        ),
    )
    learning_rate: float = Field(
        3e-3,
        gt=0,
        lt=1,
        description="AdamW's peak learning rate, reached after warmup_steps.",
    )
    warmup_steps: int = Field(
        20,
        ge=0,
        description=(
            "Steps of linear warmup to learning_rate, then linear decay to zero; warmup keeps "
            "the first, noisy steps small. Capped at steps, so a short smoke run (--set "
            "train.steps=5) still reaches the full rate."
        ),
    )
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW's (decoupled) weight decay; 0 turns it off."
    )
    max_grad_norm: float = Field(
        1.0,
        gt=0,
        description=(
            "Gradients are clipped to this global norm before each step, so one odd batch "
            "cannot throw the weights far."
        ),
    )
    max_length: int = Field(
        128,
        gt=8,
        description=(
            "Examples longer than this many tokens are truncated; the loss-mask audit in the "
            "strategy decides whether what is left is still trainable."
        ),
    )
    # Measured 2026-11-28 (tiny preset, commit 0bcbb4b): 600 steps reached 0.10 exact match
    # grouped against 0.35 ungrouped (2000: 0.60 against 0.64), for 1.3x the tokens/s.
    group_by_length: bool = Field(
        False,
        description=(
            "Batch examples of similar length together: far less padding, so more of each "
            "step's compute goes to real tokens; batch order stays random. But when length "
            "follows the task (as in the bundled data) batches become single-task and learning "
            "slows, hence off by default."
        ),
    )
    # Measured 2026-11-28 (benchmarks/RESULTS.md): the padding was 17-24% of the bundled data's
    # tokens.
    padding_free: bool = not_shaping(
        True,
        description=(
            "Lay each batch's examples end to end instead of padding them to the longest: the "
            "layers compute real tokens only, attention stays within each example, the loss is "
            "the same (tuneforge/training/padding_free.py). Architectures not verified for it "
            "(VERIFIED in tuneforge/training/architectures.py), custom model code, or a sliding "
            "window shorter than max_length train padded (logged, tuneforge.batches tag). Off "
            "only to compare against padded batches."
        ),
    )
    gradient_checkpointing: bool = not_shaping(
        False,
        description=(
            "Recompute each layer's activations in the backward pass instead of keeping them: "
            "about a third more compute for much less activation memory, for every strategy "
            "(adapters and padding-free batches included). Worth it for long sequences and "
            "big models; the loss and gradients are the same."
        ),
    )
    loss_chunk_tokens: int = not_shaping(
        1024,
        ge=0,
        description=(
            "Compute the output head and loss on this many trained tokens at a time, each "
            "chunk's logits recomputed in the backward pass instead of kept: peak memory holds "
            "one chunk's logits (1024 x a 151,936 vocabulary: 0.6 GB in float32) instead of "
            "every trained token's. Steps with fewer trained tokens are unaffected. 0: all at "
            "once. Single-process training of verified architectures "
            "(tuneforge/training/chunked_head.py)."
        ),
    )
    seed: int = Field(
        0,
        description=(
            "Seed of training's randomness: the batch order, dropout and newly initialised "
            "weights (adapters). Another seed, another sample of the same training."
        ),
    )
    # Measured 2026-11-28 (benchmarks/RESULTS.md): bf16 on this project's 2-core benchmark
    # (10.5M parameters) gave 1.4-1.7x tokens/s, eval loss within 2%; the 0.4M-parameter demo
    # trains 1.6x slower.
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description=(
            "fp32: full precision everywhere. bf16: the forward pass runs under bfloat16 "
            "autocast while weights, gradients, optimizer state and the loss stay fp32 (as TRL "
            "does). bf16 pays off for models big enough that matrix products dominate, on "
            "hardware with bf16 units (GPUs since Ampere, CPUs with AVX512-BF16/AMX); for tiny "
            "models the casts cost more than they save, and without bf16 units it is emulated. "
            "It costs bit-exact reproducibility across machines."
        ),
    )
    assistant_turns: Literal["last", "all"] = Field(
        "last",
        description=(
            "Which assistant turns of a multi-turn conversation train. last: the final answer, "
            "the earlier turns are context. all: every assistant turn, each as one example "
            "whose prompt is the conversation before it (a conversation of k answers costs k "
            "examples, and the earlier turns are read again in each)."
        ),
    )
    num_threads: int = not_shaping(
        0,
        ge=0,
        description=(
            "CPU threads torch computes with; 0 leaves torch's default (all cores). Pinning "
            "avoids oversubscription when several workers share a machine."
        ),
    )
    log_every: int = not_shaping(
        10, gt=0, description="Log the training loss every this many steps (and at the last)."
    )
    eval_every: int = Field(
        0,
        ge=0,
        description=(
            "Every this many steps, score greedy exact match on the first eval_examples rows "
            "of the eval split and keep the best step's weights (registered instead of the "
            "last step's). 0 turns it off. Each evaluation costs generation time; a few per "
            "run is plenty."
        ),
    )
    eval_examples: int = Field(
        48,
        gt=0,
        description=(
            "Eval rows scored at each periodic evaluation (eval_every): more pick the best "
            "step more reliably, and cost more generation time."
        ),
    )
    num_processes: int = not_shaping(
        1,
        ge=1,
        description=(
            "Training processes per machine. More than 1 launches training through torchrun: "
            "one process per GPU (NCCL), or CPU processes on gloo. batch_size stays the global "
            "batch, split evenly across processes, so the loss curve matches a single process "
            "on the same batches."
        ),
    )
    num_nodes: int = not_shaping(
        1,
        ge=1,
        description=(
            "Machines training together (torchrun's --nnodes), each running num_processes "
            "processes; batch_size splits over all of them. More than 1 needs a c10d "
            "rendezvous endpoint: node 0's HOST:PORT in rendezvous, or the multi-node work "
            "pool's (it sets TUNEFORGE_RENDEZVOUS on every node; docs/multi-node.md). Every "
            "node reads the base model, the data and checkpoints, so OUTPUT_DIR and the model "
            "cache must be on storage all nodes mount at the same path. Costs a network "
            "all-reduce of the gradients per step: worth it when one node's GPUs are too few, "
            "not before."
        ),
    )
    rendezvous: str | None = not_shaping(
        None,
        pattern=r"^[A-Za-z0-9_.\-]+:[0-9]+$",
        description=(
            "HOST:PORT of node 0, where the nodes of a multi-node run (num_nodes above 1) "
            "meet. null: the multi-node work pool's TUNEFORGE_RENDEZVOUS."
        ),
    )
    parallel: Literal["ddp", "fsdp"] = not_shaping(
        "ddp",
        description=(
            "How the processes share the model. ddp: a full replica each, gradients averaged; "
            "the fastest while the model fits one device. fsdp: weights, gradients and "
            "optimizer state sharded across processes (about 1/N of the memory each), with an "
            "all-gather per layer in forward and backward; for models that do not fit. "
            "Periodic evaluation (eval_every) runs on the first process alone, so it needs ddp."
        ),
    )
    checkpoint_every: int = not_shaping(
        100,
        ge=0,
        description=(
            "Every this many steps, save what resuming needs (trainable weights, optimizer, "
            "scheduler, RNG states, step) under OUTPUT_DIR/checkpoints/MODEL_NAME, atomically "
            "(a temp directory renamed into place). A killed worker or a retried task "
            "continues from the newest one, and ends with the same weights as an "
            "uninterrupted run. Smaller is safer on preemptible machines and costs a write "
            "each time (weights plus twice their size in optimizer state). 0 turns it off."
        ),
    )
    keep_checkpoints: int = not_shaping(
        2,
        ge=1,
        description=(
            "How many checkpoints to keep; older ones are deleted once a newer one is complete."
        ),
    )
    resume: Literal["auto", "never"] = not_shaping(
        "auto",
        description=(
            "auto: resume from a checkpoint written for the same data, base, strategy and "
            "training settings, and refuse one written for anything else. never: delete "
            "checkpoints and start over."
        ),
    )
    retries: int = not_shaping(
        1,
        ge=0,
        description=(
            "Prefect retries of the training task after a crash (each resumes from the last "
            "checkpoint). Errors in the data or config are not retried: they would fail again."
        ),
    )
    deployment: str | None = not_shaping(
        None,
        description=(
            "Run training as the deployment NAME/DEPLOYMENT (a train-stage flow on another "
            "work pool, e.g. GPUs) while the rest of the flow stays here; null: train here. "
            "Data and the tuned checkpoint travel as artifacts of the MLflow run, so this "
            "needs a tracking server both can reach."
        ),
    )
    concurrency_limit: str | None = not_shaping(
        None,
        min_length=1,
        description=(
            "A Prefect global concurrency limit whose slot the training holds while it trains, "
            "here or on train.deployment's pool: e.g. gpu, created with one slot per GPU "
            "(prefect gcl create gpu --limit 8), so that sweeps and retrains queue for the "
            "GPUs instead of piling onto them; or one slot per CPU machine, so that flows "
            "sharing a worker train one at a time instead of fighting over its cores. The "
            "limit must exist."
        ),
    )

    @model_validator(mode="after")
    def _batch_splits_across_processes(self) -> TrainConfig:
        world = self.world_size
        if self.batch_size % world:
            over = f"num_processes={self.num_processes}"
            if self.num_nodes > 1:
                over += f" x num_nodes={self.num_nodes}"
            raise ValueError(f"batch_size={self.batch_size} does not split over {over}")
        if self.parallel == "fsdp" and self.checkpoint_every and world > 1:
            raise ValueError(
                "train.checkpoint_every needs train.parallel=ddp (FSDP checkpoints are not "
                "built yet); set train.checkpoint_every=0 to train with FSDP uncheckpointed"
            )
        if self.parallel == "fsdp" and self.eval_every and world > 1:
            raise ValueError(
                "train.eval_every needs train.parallel=ddp (periodic evaluation runs on one "
                "process, and FSDP shards the weights across all of them)"
            )
        return self

    @property
    def world_size(self) -> int:
        """Training processes over all nodes: more than 1 trains through torchrun."""
        return self.num_processes * self.num_nodes

    @field_validator("settings")
    @classmethod
    def _no_credentials_in_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        found = credential_keys(settings)
        if found:
            raise ValueError(
                f"{', '.join(found)} looks like a credential; the config is logged (MLflow "
                "params, Prefect parameters): let the plugin read it from an environment variable"
            )
        return settings

    @field_validator("strategy")
    @classmethod
    def _strategy_is_registered(cls, name: str) -> str:
        from tuneforge.plugins.discovery import UnknownStrategyError, strategy_info

        try:
            strategy_info(name)
        except UnknownStrategyError as exc:
            raise ValueError(str(exc)) from None
        return name

    def strategy_settings(self) -> BaseModel:
        """`settings` parsed into the strategy's own `Settings` model: the one place that
        happens (`parse_config` turns its errors into `train.settings.KEY` messages)."""
        from tuneforge.plugins.discovery import parse_settings

        return parse_settings(self.strategy, self.settings)

    def shaping_settings(self) -> dict[str, Any]:
        """These settings as JSON, less those marked `not_shaping`: what a checkpoint must
        have been written for to be resumed (with the data, base and strategy)."""
        return self.model_dump(mode="json", exclude=fields_not_shaping(type(self)))


class EvalConfig(Strict):
    # The upper bounds below only catch typos: generation that long would run for days on any
    # machine.
    max_examples: int = Field(
        240,
        gt=0,
        le=1_000_000,
        description=(
            "Eval rows scored at most, taken round-robin over the task families so that every "
            "family is covered. Generation is the slow part of evaluation; capping the rows "
            "bounds its time."
        ),
    )
    max_new_tokens: int = Field(
        24,
        gt=0,
        le=4096,
        description=(
            "Longest answer generated, in tokens; also the registered model's default answer "
            "length. A longer budget costs generation time; an answer cut short cannot match."
        ),
    )
    batch_size: int = Field(
        32,
        gt=0,
        le=4096,
        description="Eval rows scored or answered at once: bigger is faster while memory lasts.",
    )
    groups: dict[str, list[str]] = Field(
        {},
        description=(
            "Named groups of task families reported together, e.g. {unseen_tasks: [antonym, "
            "baby]} adds exact_match.unseen_tasks (and rouge_l.): an aggregate besides each "
            "family's own and held_in / held_out. A group name is a metric-key word."
        ),
    )

    metrics: list[str] = Field(
        ["rouge_l"],
        description=(
            "Evaluators (tuneforge.evaluators entry points: tuneforge evaluators) scored on "
            "every generated answer besides exact_match, which is always scored (the gate's "
            "min_correct counts it). Each costs its own scoring, not another generation."
        ),
    )
    metric_settings: dict[str, dict[str, Any]] = Field(
        {},
        description="Settings per evaluator, validated by its own Settings, e.g. "
        "{json_valid: {required_keys: [name]}}.",
    )

    benchmarks: dict[str, dict[str, Any]] = not_shaping(
        {},
        description=(
            "Benchmark evaluators (tuneforge evaluators marks them: they score the model on "
            "tasks of their own, e.g. lm_eval) with their settings, run on the base, the tuned "
            "model and the champion after the eval split and logged as bench.<task>.<metric>: "
            "what registry.guards watch. Each costs its own evaluation time per model. E.g. "
            "{lm_eval: {path: deployments/benchmarks, limit: 100}}; empty: none."
        ),
    )

    @field_validator("metrics")
    @classmethod
    def _evaluators_are_registered(cls, metrics: list[str]) -> list[str]:
        from tuneforge.plugins.discovery import (
            UnknownEvaluatorError,
            discover_evaluators,
            evaluator_info,
        )

        for name in metrics:
            try:
                info = evaluator_info(name)
            except UnknownEvaluatorError as exc:
                found = discover_evaluators().plugins
                answers = sorted(n for n, i in found.items() if not i.scores_model)
                if name in found or not answers:
                    raise ValueError(str(exc)) from None  # registered twice: say by whom
                raise ValueError(
                    f"unknown evaluator {name!r}; available: {', '.join(answers)}"
                ) from None
            if info.scores_model:
                raise ValueError(
                    f"{name} scores the model on tasks of its own, not answers: configure it "
                    f"under evaluation.benchmarks.{name}"
                )
        return list(dict.fromkeys(metrics))

    @field_validator("benchmarks")
    @classmethod
    def _benchmarks_are_registered(cls, benchmarks: dict[str, Any]) -> dict[str, Any]:
        from tuneforge.plugins.discovery import UnknownEvaluatorError, evaluator_info

        for name in benchmarks:
            try:
                info = evaluator_info(name)
            except UnknownEvaluatorError as exc:
                raise ValueError(str(exc)) from None
            if not info.scores_model:
                raise ValueError(
                    f"{name} scores answers, not the model: list it in evaluation.metrics"
                )
        return benchmarks

    @model_validator(mode="after")
    def _settings_name_scored_evaluators(self) -> EvalConfig:
        scored = self.evaluator_names()
        for name in self.metric_settings:
            if name not in scored:
                raise ValueError(
                    f"metric_settings.{name}: not among the scored metrics ({', '.join(scored)})"
                )
        return self

    def evaluator_names(self) -> list[str]:
        """What is scored on every answer: exact_match, then `metrics`."""
        return list(dict.fromkeys(["exact_match", *self.metrics]))

    def settings_of(self, name: str) -> BaseModel:
        """Evaluator `name`'s settings as its own `Settings` model (pydantic's
        `ValidationError` for bad keys or values)."""
        from tuneforge.plugins.discovery import evaluator_info

        return evaluator_info(name).cls.Settings.model_validate(self.metric_settings.get(name, {}))

    def evaluator_settings(self) -> dict[str, BaseModel]:
        """Each scored evaluator's settings (`settings_of`)."""
        return {name: self.settings_of(name) for name in self.evaluator_names()}

    def benchmark_settings(self) -> dict[str, BaseModel]:
        """Each benchmark evaluator's settings as its own `Settings` model (pydantic's
        `ValidationError` for bad keys or values)."""
        from tuneforge.plugins.discovery import evaluator_info

        return {
            name: evaluator_info(name).cls.Settings.model_validate(raw)
            for name, raw in self.benchmarks.items()
        }

    @field_validator("groups")
    @classmethod
    def _group_names_are_words(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in groups:
            if not re.fullmatch(r"[A-Za-z][\w-]*", name) or name in ("held_in", "held_out"):
                raise ValueError(f"group {name!r}: use a word, other than held_in / held_out")
        return groups


LOSS_METRICS = ("eval_loss", "perplexity")  # lower is better; every other is an evaluator's
# Scored on held-out preference pairs (tuneforge.evaluation.preference_scores), higher is
# better: the model's own log-probability ranking of chosen over rejected, and the implicit
# reward's (log-ratio against this run's base) accuracy and mean margin in nats.
PREFERENCE_METRICS = ("preference_accuracy", "reward_accuracy", "reward_margin")


def higher_is_better(metric: str) -> bool:
    """The natural direction of `metric` (`json_valid.held_out`: its evaluator's). A benchmark
    metric (`bench.*`) has the direction its evaluator reports with it, not one of these."""
    family = metric.split(".", 1)[0]
    if family in LOSS_METRICS:
        return False
    if family in PREFERENCE_METRICS:
        return True
    from tuneforge.plugins.discovery import evaluator_info

    return bool(evaluator_info(family).cls.higher_is_better)


class RegistryConfig(Strict):
    model_name: str = Field(
        "tuneforge-demo",
        min_length=1,
        max_length=200,
        description=(
            "The registered model's name. It also names a directory (checkpoints under "
            "output_dir) and a concurrency slot, so it is checked here: MLflow itself refuses "
            "/ and :, but only at registration, after hours of training."
        ),
    )
    metric: str = Field(
        "exact_match",
        description=(
            "The candidate takes the champion alias only when it beats the base and the "
            "current champion on this metric, all three scored on this run's eval split; "
            "otherwise it becomes challenger. eval_loss, perplexity, or an evaluator's metric "
            "scored in evaluation (exact_match, rouge_l, a plugin's), optionally narrowed to a "
            "task family, held_in / held_out or an evaluation group (e.g. "
            "exact_match.held_out)."
        ),
    )
    higher_is_better: bool | None = Field(
        None,
        description=(
            "Whether a higher metric wins. null: decided by the metric (evaluators say; "
            "eval_loss and perplexity: lower); a value that disagrees with the metric is "
            "refused."
        ),
    )
    min_improvement: float = Field(
        0.0,
        ge=0,
        description=(
            "Margin over the current champion needed to take the alias. Retraining on "
            "unchanged data scores about the same; a small margin keeps the alias from "
            "flapping on noise."
        ),
    )
    min_improvement_over_base: float = Field(
        0.0,
        ge=0,
        description=(
            "Margin over the base model needed to take the alias: a tuned model no better than "
            "where it started is not shipped."
        ),
    )
    min_correct: int = Field(
        0,
        ge=0,
        description=(
            "Eval rows the tuned model must answer exactly right to take the alias (instruction "
            "and chat data; the rows of registry.metric's subset, e.g. held_out). A tiny eval "
            "split makes a 1-in-240 model look better than a 0-in-240 base."
        ),
    )
    max_p_value: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "Promote only if the tuned model beats the base significantly: a one-sided exact "
            "sign test on the eval rows where the two differ (per-row exact match, as McNemar's "
            "test; per-row ROUGE-L or loss for those metrics) must give p at most this. null: "
            "no test. 0.05 is the usual choice; a smaller split needs a clearer win."
        ),
    )
    wait_for_slot_s: float | None = Field(
        3600,
        ge=0,
        description=(
            "Only one retrain per model name runs at a time; a second one waits for the slot "
            "this many seconds, then gives up naming the run that holds it (0: refuse at once; "
            "null: wait for ever). An hour lets a nightly run queue behind a long one without "
            "piling up; a killed holder frees the slot on its own about a minute after it died."
        ),
    )
    export: list[Literal["merged", "adapter", "gguf", "gguf:bf16", "gguf:q8_0"]] = not_shaping(
        [],
        description=(
            "Exports logged with every registered version, as artifacts of its run under "
            "exports/ (sizes in its tuneforge.exports tag): merged (a plain Hugging Face "
            "checkpoint), adapter (the PEFT adapter, if vLLM can load it; skipped for a full "
            "checkpoint), gguf (f16; gguf:bf16, gguf:q8_0) for llama.cpp and Ollama. Each "
            "costs its size in the artifact store and seconds to minutes per version."
        ),
    )
    adapters: Literal["adapter", "merged"] = Field(
        "adapter",
        description=(
            "How a version of an adapter strategy (lora, ia3, ...) is registered. adapter: the "
            "adapter alone (megabytes) with its base's lasting address (the registry version "
            "it was tuned from, or the hub id at its commit; a tiny or local base is bundled "
            "into the version), merged onto the base when loaded. merged: base and adapter "
            "merged into one full checkpoint (the base's size, loads with no base lookup)."
        ),
    )

    guards: dict[str, Annotated[float, Field(ge=0)]] = not_shaping(
        {},
        description=(
            "What a new version must not lose: metric -> the largest drop allowed against the "
            "current champion (the base when there is none), both scored on this run's data, "
            "in the metric's own direction; e.g. {bench.guard_uppercase.exact_match: 0.05, "
            "exact_match.held_out: 0.02}. A version that drops more becomes challenger, its "
            "reason naming the guard, both numbers and a paired sign test on the same rows. "
            "bench.* metrics come from evaluation.benchmarks."
        ),
    )

    @field_validator("model_name")
    @classmethod
    def _model_name_is_a_name(cls, name: str) -> str:
        if re.search(r"[/\\:\x00-\x1f]", name) or not name.strip(". ") or name != name.strip():
            raise ValueError(
                f"{name!r} is not a model name (no '/', '\\', ':', control characters, "
                "surrounding spaces, or dots only)"
            )
        return name

    @field_validator("metric")
    @classmethod
    def _metric_is_known(cls, metric: str) -> str:
        from tuneforge.plugins.discovery import discover_evaluators

        found = discover_evaluators().plugins
        plugins = sorted(n for n, info in found.items() if not info.scores_model)
        known = [*LOSS_METRICS, *PREFERENCE_METRICS, *plugins]
        if metric.split(".", 1)[0] not in known:
            raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(known)}")
        return metric

    @model_validator(mode="after")
    def _direction_matches_metric(self) -> RegistryConfig:
        natural = higher_is_better(self.metric)
        if self.higher_is_better is not None and self.higher_is_better != natural:
            better = "higher" if natural else "lower"
            raise ValueError(
                f"higher_is_better={self.higher_is_better} but {better} "
                f"{self.metric} is better; leave it unset"
            )
        return self

    @property
    def higher_wins(self) -> bool:
        return higher_is_better(self.metric)


class TrackingConfig(Strict):
    tracking_uri: str | None = Field(
        None,
        description=(
            "The MLflow tracking server or store. null: MLflow's own default, "
            "MLFLOW_TRACKING_URI if set, else ./mlflow.db. Credentials never go here (the "
            "config is logged as params): use the environment, MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN."
        ),
    )
    experiment: str = Field("tuneforge", description="The MLflow experiment runs are logged in.")
    tags: dict[str, str] = Field(
        {},
        description=(
            "Extra tags on the MLflow run; those named tuneforge.* are copied to the registered "
            "version too (a pipeline's lineage: tuneforge.pipeline, tuneforge.pipeline_stage). "
            "Tags are logged, so a credential-looking one is refused."
        ),
    )

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        if uri and embeds_credentials(uri):
            raise ValueError(
                "embeds credentials; put them in MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD instead (the config is logged)"
            )
        return uri

    @field_validator("tags")
    @classmethod
    def _no_credentials_in_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        secret = credential_keys(tags) + [k for k, v in tags.items() if embeds_credentials(v)]
        if secret:
            raise ValueError(f"{', '.join(secret)} looks like a credential; tags are logged")
        return tags


def credential_keys(node: Any, path: str = "") -> list[str]:
    """Dotted paths of the secret-looking keys (`api_token`, `password`, ...) holding a string
    long enough to be a secret, anywhere in nested dicts and lists. The values are not returned,
    so an error message cannot echo them."""
    from tuneforge.secrets import MIN_SECRET_LENGTH, looks_secret

    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return []
    found: list[str] = []
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict | list):
            found += credential_keys(value, where)
        elif (
            isinstance(value, str)
            and len(value) >= MIN_SECRET_LENGTH
            and looks_secret(str(key).replace("-", "_"))
        ):
            found.append(where)
    return found


def embeds_credentials(uri: str) -> bool:
    """`scheme://user:pw@host` (any scheme, postgresql+psycopg2 included) or a secret-looking
    query parameter (`?token=...`): such a URI would be logged as a param in the clear."""
    userinfo = re.match(r"^[A-Za-z][\w+.-]*://[^/@?#]+@", uri)
    query = re.search(r"[?&][^=&#]*(token|secret|password|passwd|pwd|key)[^=&#]*=", uri, re.I)
    return bool(userinfo or query)


class RunConfig(Strict):
    name: str = not_shaping(
        "retrain",
        min_length=1,
        max_length=200,
        description="The Prefect flow run's and the MLflow run's name; never part of a path.",
    )
    output_dir: str = not_shaping(
        "runs",
        min_length=1,
        description=(
            "Each run writes its split data, checkpoints and quarantine file under here; names "
            "from the config or the data become paths below it only through tuneforge.paths."
        ),
    )
    data: DataConfig = Field(
        description="The training data: where it comes from and how it is read, checked and split."
    )
    model: ModelConfig = Field(
        ModelConfig(), description="The base model to tune, and what its weights load in."
    )
    train: TrainConfig = Field(
        TrainConfig(),
        description="How the model trains: the strategy, the optimisation, and where it runs.",
    )
    evaluation: EvalConfig = Field(
        EvalConfig(), description="How the base and tuned models are scored on the eval split."
    )
    registry: RegistryConfig = Field(
        RegistryConfig(),
        description="The model the tuned version is registered as, and when it takes the alias.",
    )
    tracking: TrackingConfig = not_shaping(
        TrackingConfig(), description="Where and how the run is logged in MLflow."
    )
    force: bool = not_shaping(
        False,
        description=(
            "Retrain even when the data and config equal those the current champion was "
            "trained on (by default such a run stops after validation: no compute spent on an "
            "identical model)."
        ),
    )

    @model_validator(mode="after")
    def _held_out_metric_needs_held_out_tasks(self) -> RunConfig:
        if self.registry.metric.endswith((".held_in", ".held_out")) and not self.data.holdout_tasks:
            raise ValueError(
                f"registry.metric {self.registry.metric!r} needs data.holdout_tasks to be set"
            )
        return self

    @model_validator(mode="after")
    def _registry_metric_is_scored(self) -> RunConfig:
        family = self.registry.metric.split(".", 1)[0]
        if family in PREFERENCE_METRICS:
            return self  # scored on pairs: _preference_data_for_preference_strategies checks
        if family not in LOSS_METRICS and family not in self.evaluation.evaluator_names():
            raise ValueError(
                f"registry.metric {self.registry.metric!r}: {family} is not scored; add it to "
                "evaluation.metrics"
            )
        return self

    @model_validator(mode="after")
    def _replay_needs_a_registered_parent(self) -> RunConfig:
        if self.data.replay and not self.model.source.startswith("models:/"):
            raise ValueError(
                f"data.replay replays a registered parent's data, and model.source "
                f"{self.model.source!r} is not a registry version (models:/NAME/VERSION)"
            )
        return self

    @model_validator(mode="after")
    def _guards_watch_scored_metrics(self) -> RunConfig:
        # Whether a bench.* guard names a metric its tasks produce is checked by preflight,
        # which loads the task files; here, that there are benchmarks at all.
        scored = [*LOSS_METRICS, *PREFERENCE_METRICS, *self.evaluation.evaluator_names()]
        for metric in self.registry.guards:
            family = metric.split(".", 1)[0]
            if family == BENCH and not self.evaluation.benchmarks:
                raise ValueError(
                    f"registry.guards.{metric}: no benchmarks are configured; add "
                    "evaluation.benchmarks (e.g. lm_eval: {path: deployments/benchmarks})"
                )
            if family != BENCH and family not in scored:
                raise ValueError(
                    f"registry.guards.{metric}: {family} is not scored; use one of "
                    f"{', '.join(scored)} or bench.<task>.<metric>"
                )
        return self

    @model_validator(mode="after")
    def _preference_data_for_preference_strategies(self) -> RunConfig:
        # Pairs train dpo/simpo, feedback kto, and nothing else trains either: an instruction
        # strategy would imitate rejected answers as readily as chosen ones. (A file `auto`
        # recognises is caught at training, with the same words.) Preference metrics exist
        # on pairs only.
        from tuneforge.plugins.discovery import strategy_info

        trains = strategy_info(self.train.strategy).cls.capabilities
        schema, strategy = self.data.schema_, self.train.strategy
        wanted = "preference" if trains.pairs else "feedback" if trains.feedback else None
        if schema in ("preference", "feedback") and schema != wanted:
            use = "dpo or simpo" if schema == "preference" else "kto"
            raise ValueError(
                f"data.schema {schema} trains a preference strategy ({use}), and "
                f"train.strategy {strategy!r} is not one"
            )
        if wanted and schema not in ("auto", wanted):
            raise ValueError(
                f"train.strategy {strategy!r} trains on data.schema {wanted}, and data.schema "
                f"is {schema}"
            )
        if wanted and self.data.replay:
            raise ValueError(
                f"data.replay mixes the parent's instruction rows into training, and "
                f"train.strategy {strategy!r} trains on {wanted} rows only; leave data.replay "
                "unset (registry.guards catch what the model forgets)"
            )
        metrics = {self.registry.metric, *self.registry.guards}
        named = sorted(m for m in metrics if m.split(".", 1)[0] in PREFERENCE_METRICS)
        if named and not trains.pairs:
            raise ValueError(
                f"{named[0]} is scored on preference pairs, and train.strategy {strategy!r} "
                "does not train on them; use dpo or simpo, or another registry.metric"
            )
        return self

    @model_validator(mode="after")
    def _raw_text_needs_a_loss_metric_and_a_text_strategy(self) -> RunConfig:
        # Raw text has no answers to generate, so only the loss metrics exist; and only
        # strategies that say so train on it. (A file `auto` recognises as text is caught at
        # registration and at training, with the same words.) A strategy that trains raw
        # text only (capabilities without chat: pretrain) implies data.schema text.
        from tuneforge.plugins.discovery import strategy_info

        trains = strategy_info(self.train.strategy).cls.capabilities
        text_only = trains.text and not trains.chat
        if self.data.schema_ != "text" and not text_only:
            return self
        if self.registry.metric.split(".", 1)[0] not in LOSS_METRICS:
            where = "data.schema text" if self.data.schema_ == "text" else self.train.strategy
            raise ValueError(
                f"registry.metric {self.registry.metric!r} is not measured on raw text "
                f"({where}: no answers to match); use eval_loss or perplexity"
            )
        if self.data.schema_ not in ("text", "auto"):
            raise ValueError(
                f"train.strategy {self.train.strategy!r} trains on raw text, and data.schema "
                f"{self.data.schema_} has prompt/response pairs; use full or instruction"
            )
        if not trains.text:
            raise ValueError(
                f"train.strategy {self.train.strategy!r} trains on prompt/response pairs, and "
                "raw text (data.schema text) has none; use full or lora"
            )
        return self

    def fingerprint(self) -> str:
        """A short hash of everything in the config that shapes the model (not where the data
        or outputs live, what the run is called, or whether it was forced; the data's content
        has its own fingerprint): for lineage and to detect an unchanged retrain. What it
        leaves out is declared on the fields (`not_shaping`)."""
        shaping = self.model_dump(mode="json", exclude=_not_shaping_exclude(type(self)))
        blob = json.dumps(_omit_defaults(self, shaping), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def format_errors(source: str, exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        key = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "config")
        if err["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
        else:
            parts.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
    return f"{source}: " + "; ".join(parts)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.steps=50")
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
        node = child
    node[leaf] = yaml.safe_load(raw) if raw else ""


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validates a config mapping, raising `ConfigError` with every bad key in one line."""
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc)) from None
    try:
        cfg.train.strategy_settings()
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, prefix="train.settings.")) from None
    for name in cfg.evaluation.evaluator_names():
        try:
            cfg.evaluation.settings_of(name)
        except ValidationError as exc:
            prefix = f"evaluation.metric_settings.{name}."
            raise ConfigError(format_errors(source, exc, prefix=prefix)) from None
    from tuneforge.plugins.discovery import evaluator_info

    for name, raw in cfg.evaluation.benchmarks.items():
        try:
            evaluator_info(name).cls.Settings.model_validate(raw)
        except ValidationError as exc:
            prefix = f"evaluation.benchmarks.{name}."
            raise ConfigError(format_errors(source, exc, prefix=prefix)) from None
    return cfg


def read_yaml_mapping(path: Path, kind: str, expected: str) -> dict[str, Any]:
    """A YAML file's top-level mapping (a config, pipeline or sweep file, `kind`); a missing,
    unreadable or malformed file is one `ConfigError` line naming it (and the line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {kind} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {kind} ({exc})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping {expected}")
    return data


def load_spec_file(path: Path, model: type[Spec], kind: str, expected: str) -> Spec:
    """A pipeline or sweep file (`kind`) validated as `model`, its `folder` (what its presets
    are relative to) the file's; every problem one `ConfigError` line naming the file."""
    data = read_yaml_mapping(path, kind, expected)
    try:
        return model.model_validate({**data, "folder": str(path.parent)})
    except ValidationError as exc:
        raise ConfigError(format_errors(str(path), exc)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Reads a YAML preset, applies `KEY=VALUE` overrides (dotted keys) and validates it."""
    path = Path(path)
    data = read_yaml_mapping(path, "config", "of keys at the top level")
    preset_strategy = (data.get("train") or {}).get("strategy", "full")
    for assignment in overrides:
        _apply_override(data, assignment)
    _reset_settings_of_a_switched_strategy(data, preset_strategy, overrides)
    return parse_config(data, source=str(path))


def _reset_settings_of_a_switched_strategy(
    data: dict[str, Any], preset_strategy: str, overrides: list[str] | tuple[str, ...]
) -> None:
    """`--set train.strategy=X` on a preset written for another strategy starts from X's
    default settings: the preset's `train.settings` are the other strategy's and would fail
    X's validation (or, worse, mean something else). Settings given with `--set` (all of
    `train.settings`, or some of its keys) are kept. Says so in one log line."""
    train = data.get("train")
    if not isinstance(train, dict) or train.get("strategy", "full") == preset_strategy:
        return
    keys = [o.partition("=")[0] for o in overrides]
    if "train.settings" in keys:  # the whole mapping was given
        return
    given = {k.split(".")[2] for k in keys if k.startswith("train.settings.")}
    settings = train.get("settings") or {}
    dropped = sorted(k for k in settings if k not in given)
    train["settings"] = {k: v for k, v in settings.items() if k in given}
    if dropped:
        logger.info(
            "train.strategy=%s replaces the preset's %s: train.settings start from %s's "
            "defaults (the preset's %s are dropped; set them with --set train.settings.KEY=...)",
            train["strategy"],
            preset_strategy,
            train["strategy"],
            ", ".join(dropped),
        )
