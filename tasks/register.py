"""Log the tuned model to MLflow, register a version, and promote it only when it wins.

The model is saved in MLflow's transformers flavour (safetensors weights plus tokenizer) with a
prompt template, so `mlflow.pyfunc.load_model("models:/NAME@champion").predict([...])` answers
plain instructions. The files are uploaded to the run first, every one checked by path and size,
and only then is a version registered from them, so a version never points at a half-uploaded
model. The task is safe to repeat: a re-run (or a Prefect retry) for the same run finds the
version it registered and finishes it (tags, alias, description) instead of adding another.

Promotion: the new version takes the `champion` alias when there is no champion yet or when it
beats the champion on `tuned.<metric>`; otherwise it takes the `challenger` alias and the
champion stays. The decision and its reason are tagged on the version.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge import lineage
from tuneforge.config import RegistryConfig
from tuneforge.jsonl import read_jsonl
from tuneforge.lineage import CHALLENGER, CHAMPION
from tuneforge.models import load_pretrained
from tuneforge.pause_points import pause_point
from tuneforge.run_context import RunContext
from tuneforge.tracking import is_unreachable

MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str | None  # champion or challenger; None for a sweep's runner-up
    reason: str
    model_uri: str  # models:/NAME/VERSION

    @property
    def decision(self) -> str:
        held = f"is {self.alias}" if self.alias else "has no alias"
        return f"{self.name} version {self.version} {held}: {self.reason}"


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "tokenizers", "peft")
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in packages]


class IncompleteUpload(ValueError):
    """The run's copy of the model lacks files or has some at the wrong size (one line)."""


def local_files(root: Path) -> dict[str, int]:
    """Every file under `root`, by path relative to it, with its size in bytes."""
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in root.rglob("*")
        if path.is_file()
    }


def uploaded_files(client: Any, run_id: str, root: str) -> dict[str, int | None]:
    """Every artifact file of the run under `root` (recursively), by path relative to `root`,
    with the size the artifact store reports (None where it reports none)."""
    found: dict[str, int | None] = {}
    pending = [root]
    while pending:
        for info in client.list_artifacts(run_id, pending.pop()):
            if info.is_dir:
                pending.append(info.path)
            else:
                found[info.path.removeprefix(f"{root}/")] = info.file_size
    return found


def check_upload(
    local: dict[str, int], uploaded: dict[str, int | None], run_id: str, tracking_uri: str
) -> None:
    """Raises `IncompleteUpload` unless every local file was uploaded with its size."""
    missing = sorted(set(local) - set(uploaded))
    wrong_size = sorted(
        f"{path} ({uploaded[path]} of {size} bytes)"
        for path, size in local.items()
        if uploaded.get(path) is not None and uploaded[path] != size
    )
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if wrong_size:
        problems.append(f"wrong size {wrong_size}")
    if problems:
        raise IncompleteUpload(
            f"model upload to run {run_id} at {tracking_uri} incomplete "
            f"({len(missing) + len(wrong_size)} of {len(local)} files): {'; '.join(problems)}; "
            "nothing was registered"
        )


@dataclass(frozen=True)
class ModelPackage:
    """What a registered version holds besides the checkpoint (see `tuneforge.serving`)."""

    base: str | None  # an adapter's lasting base address; None for a full checkpoint
    dtype: str = "float32"  # what the weights load in
    max_new_tokens: int = 64  # predict's default answer length: the evaluation's
    trust_remote_code: bool = False


def adapter_base(base_path: str, lineage_tags: dict[str, str]) -> str:
    """The address of an adapter's base that outlives this worker: the registry version it was
    pinned to, the hub id at the commit the cache holds, else `bundled` (the base is copied
    into the version: a tiny or local base has no address another machine can resolve)."""
    from tuneforge.serving import hub_reference

    if parent := lineage_tags.get(lineage.PARENT_VERSION):
        return f"models:/{parent}"
    source, path = lineage_tags.get(lineage.BASE_MODEL, ""), Path(base_path)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return hub_reference(source, path.name)  # a hub cache snapshot is named by its commit
    return "bundled"


def _link_files(src: Path, dst: Path) -> Path:
    """`dst` with hard links to (or copies of) the files directly in `src`: the checkpoint
    without what a strategy keeps beside it (a merged export, optimizer state)."""
    import os
    import shutil

    dst.mkdir(parents=True)
    for file in src.iterdir():
        if file.is_file():
            try:
                os.link(file, dst / file.name)
            except OSError:  # another file system
                shutil.copy2(file, dst / file.name)
    return dst


def save_package(model_dir: Path, package: ModelPackage, local: Path, tmp: Path) -> None:
    """Writes the MLflow pyfunc model of `tuneforge.serving` for `model_dir` into `local`."""
    import shutil

    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from tuneforge import prompts, serving

    adapter = package.base is not None
    tmp.mkdir(parents=True, exist_ok=True)
    manifest = {"tuneforge_layout": serving.LAYOUT, "adapter": adapter, **asdict(package)}
    (tmp / serving.MANIFEST).write_text(json.dumps(manifest, indent=1))
    artifacts = {
        serving.CHECKPOINT: str(_link_files(model_dir, tmp / serving.CHECKPOINT)),
        "manifest": str(tmp / serving.MANIFEST),
    }
    if package.base == "bundled":
        base_dir = json.loads((model_dir / "adapter_config.json").read_text())
        base = Path(base_dir["base_model_name_or_path"])
        artifacts[serving.BUNDLED_BASE] = str(_link_files(base, tmp / serving.BUNDLED_BASE))
    shutil.copy2(prompts.__file__, tmp / "tuneforge_prompts.py")  # serving's one import
    # Parameters only: an input schema would make MLflow coerce the inputs (strings, records
    # and chat turns alike) into one table; `serving.conversations` checks them instead.
    signature = ModelSignature(
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", package.max_new_tokens),
                ParamSpec("batch_size", "long", 16),
            ]
        )
    )
    with warnings.catch_warnings():  # "no input example": one would run the model at save time
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=serving.__file__,
            artifacts=artifacts,
            code_paths=[str(tmp / "tuneforge_prompts.py")],
            pip_requirements=_pip_requirements(),
            signature=signature,
            # Shown in the MLflow UI; with a signature given, saved without running the model.
            input_example=[
                {"instruction": "Convert to uppercase.", "input": "salt"},
                {"instruction": "Name a colour.", "input": ""},
            ],
        )


def merged_checkpoint(adapter_dir: Path, dst: Path, trust_remote_code: bool) -> Path:
    """Base and adapter merged into one checkpoint (`registry.adapters: merged`)."""
    model, tokenizer = load_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    model.merge_and_unload().save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def log_model_artifacts(
    model_dir: str, package: ModelPackage, run_id: str, tracking_uri: str
) -> str:
    """Saves the checkpoint as a tuneforge pyfunc model under the run and returns its URI once
    every file is in the artifact store at its size (else `IncompleteUpload`)."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MODEL_ARTIFACT
        save_package(Path(model_dir), package, local, Path(tmp))
        client = MlflowClient(tracking_uri)
        client.log_artifacts(run_id, str(local), artifact_path=MODEL_ARTIFACT)
        uploaded = uploaded_files(client, run_id, MODEL_ARTIFACT)
        check_upload(local_files(local), uploaded, run_id, tracking_uri)
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def _gain(candidate: float, reference: float, higher_is_better: bool) -> float:
    return candidate - reference if higher_is_better else reference - candidate


def decide(
    candidate: float,
    base: float | None,
    champion: float | None,
    cfg: RegistryConfig,
    paired_failure: str | None = None,
) -> tuple[bool, str]:
    """Whether the candidate should become champion, and why (one sentence).

    It must beat the base by more than `min_improvement_over_base`, pass the paired checks
    against the base (`paired_failure`: `registry.min_correct`, `registry.max_p_value`), and
    beat the current champion (if any) by more than `min_improvement`, on `tuned.<metric>` in
    the configured direction.
    """
    metric, up = cfg.metric, cfg.higher_wins
    if base is not None and _gain(candidate, base, up) <= cfg.min_improvement_over_base:
        margin = (
            f" by more than {cfg.min_improvement_over_base}"
            if cfg.min_improvement_over_base
            else ""
        )
        return False, f"{metric}={candidate:.4f} does not beat the base's {base:.4f}{margin}"
    if paired_failure:
        return False, f"{metric}={candidate:.4f} beats the base, but {paired_failure}"
    if champion is None:
        return True, f"no current champion; {metric}={candidate:.4f}"
    if _gain(candidate, champion, up) <= cfg.min_improvement:
        margin = f" by more than {cfg.min_improvement}" if cfg.min_improvement else ""
        return False, f"{metric}={candidate:.4f} does not beat champion's {champion:.4f}{margin}"
    return True, f"{metric}={candidate:.4f} beats champion's {champion:.4f}"


def _subset(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The rows `metric` is computed on: all, a task family's, held-in / held-out ones, or an
    `evaluation.groups` group's."""
    _, _, narrowed = metric.partition(".")
    if not narrowed:
        return rows
    if narrowed in ("held_in", "held_out"):
        return [r for r in rows if r.get("held_out") == (narrowed == "held_out")]
    if any(narrowed in r.get("groups", ()) for r in rows):
        return [r for r in rows if narrowed in r.get("groups", ())]
    return [r for r in rows if lineage.metric_safe(r.get("task") or "untagged") == narrowed]


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of at least `wins` of `wins + losses` differing
    rows going the candidate's way if neither model were better. On per-row exact match this
    is McNemar's exact test."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def paired_gate(
    base_rows: list[dict[str, Any]], tuned_rows: list[dict[str, Any]], cfg: RegistryConfig
) -> str | None:
    """Why the candidate fails `registry.min_correct` or `registry.max_p_value` against the
    base on the same eval rows, or None when it passes (or neither is asked for)."""
    tuned = _subset(tuned_rows, cfg.metric)
    base = {r["row"]: r for r in _subset(base_rows, cfg.metric)}
    answered = [r for r in tuned if "exact" in r]  # raw text has no answers to count
    if cfg.min_correct and answered:
        correct = sum(bool(r["exact"]) for r in answered)
        if correct < cfg.min_correct:
            return (
                f"only {correct} of {len(answered)} eval rows answered exactly "
                f"(registry.min_correct={cfg.min_correct})"
            )
    if cfg.max_p_value is None:
        return None
    family = cfg.metric.split(".", 1)[0]
    # Per row: `exact` for exact match, the evaluator's own value, or the loss (both losses).
    key = {"exact_match": "exact", "eval_loss": "loss", "perplexity": "loss"}.get(family, family)
    sign = 1 if cfg.higher_wins else -1
    wins = losses = 0
    for row in tuned:
        other = base.get(row["row"])
        if other is None or row.get(key) is None or other.get(key) is None:
            continue
        difference = sign * (float(row[key]) - float(other[key]))
        wins += difference > 0
        losses += difference < 0
    p = sign_test_p(wins, losses)
    if p > cfg.max_p_value:
        return (
            f"not significantly better than the base on {len(tuned)} eval rows (sign test on "
            f"per-row {key}: {wins} better, {losses} worse, p={p:.3g} > "
            f"registry.max_p_value={cfg.max_p_value:g})"
        )
    return None


def model_card(name: str, version: str, reason: str, tags: dict, base: dict, tuned: dict) -> str:
    """A markdown model card: what this version is, where it came from, how it scored."""
    table = "\n".join(
        f"| {k.removeprefix(lineage.TAG_PREFIX)} | {v} |" for k, v in sorted(tags.items())
    )
    rows = "\n".join(
        f"| {k} | {base.get(k, float('nan')):.4f} | {v:.4f} |"
        for k, v in tuned.items()
        if k != "examples"
    )
    return (
        f"# {name} version {version}\n\n"
        f"Decision: {reason}\n\n"
        f"## Evaluation (held-back split)\n\n| metric | base | tuned |\n|---|---|---|\n{rows}\n\n"
        f"## Lineage\n\n| key | value |\n|---|---|\n{table}\n"
    )


@dataclass(frozen=True)
class Unchanged:
    """The champion this run's data and config equal: nothing to retrain."""

    version: str
    reason: str


@task(name="check_unchanged")
def unchanged_since_champion(
    *,
    model_name: str,
    data_fingerprint: str,
    config_hash: str,
    ctx: RunContext,
    config_tag: str = lineage.CONFIG_HASH,
) -> Unchanged | None:
    """The champion trained on the same data with the same config (its `config_tag`: a
    sweep's compares `tuneforge.sweep_fingerprint`), so retraining can be skipped, or None.
    A skip is tagged on the run as `tuneforge.skipped`."""
    from mlflow.tracking import MlflowClient

    from tuneforge.model_registry import current_champion

    client = MlflowClient(ctx.tracking_uri)
    champion = current_champion(client, model_name)
    if champion is None:
        return None
    tags = champion.tags
    if tags.get(lineage.DATA_FINGERPRINT) != data_fingerprint:
        return None
    if tags.get(config_tag) != config_hash:
        return None
    reason = (
        f"data {data_fingerprint} and config {config_hash} are those of {model_name} "
        f"version {champion.version} (champion); nothing to retrain (force: true overrides)"
    )
    client.set_tag(ctx.run_id, lineage.SKIPPED, reason)
    return Unchanged(str(champion.version), reason)


def champion_score(
    client: Any, name: str, metric: str, evaluated: dict[str, Any] | None
) -> float | None:
    """The current champion's score for the gate: from its evaluation on this run's split when
    that is still the champion, else (it could not be loaded here, or another run promoted a
    new one meanwhile) the `tuned.<metric>` its own run logged. None without a champion."""
    from tuneforge.model_registry import current_champion

    champion = current_champion(client, name)
    if champion is None:
        return None
    if evaluated and evaluated["version"] == champion.version and evaluated["metrics"]:
        return evaluated["metrics"].get(metric)
    return client.get_run(champion.run_id).data.metrics.get(
        lineage.metric_key(lineage.TUNED, metric)
    )


def retry_if_unreachable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a registration that failed for want of a tracking server
    (or lost an upload file), not one that failed on its inputs."""
    error = state.data if isinstance(state.data, BaseException) else None
    return error is not None and (is_unreachable(error) or isinstance(error, IncompleteUpload))


# Run tags that registration writes itself: not lineage, and present on a re-run's run.
_OWN_RUN_TAGS = (lineage.REGISTERED_VERSION, lineage.DECISION)


# Retries: every MLflow call already retries for about four minutes on its own
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES); these cover longer outages. A Prefect retry repeats the
# whole task (reload, save and re-upload the model: seconds to minutes for a big one) rather
# than only the call that failed, which a retry loop around each of the ten calls could do;
# in exchange one mechanism covers a failure anywhere in the task, and it is safe because the
# task finds and finishes the version it registered before instead of registering another.
RETRIED_IF_UNREACHABLE = {
    "retries": 3,
    "retry_delay_seconds": [30, 60, 120],
    "retry_condition_fn": retry_if_unreachable,
}


@task(name="register_model", **RETRIED_IF_UNREACHABLE)
def register_model(
    *,
    model_dir: str,
    base_metrics: dict[str, float],
    tuned_metrics: dict[str, float],
    champion: dict[str, Any] | None,
    registry: RegistryConfig,
    ctx: RunContext,
    eval_dir: str | None = None,
    max_new_tokens: int = 64,
) -> Registration:
    """Registers the tuned model as a new version with its lineage tags and model card, and
    moves `champion` to it only when it passes the promotion gate (else: `challenger`).

    Idempotent: if a version of `registry.model_name` already comes from this run (an earlier
    attempt crashed after creating it), that version is finished instead of a new one made."""
    from mlflow.tracking import MlflowClient

    cfg = registry
    if cfg.metric not in tuned_metrics:
        raise ValueError(f"registry.metric {cfg.metric!r} is not among {sorted(tuned_metrics)}")
    client = MlflowClient(ctx.tracking_uri)
    version, existing, lineage_tags = _version_of_run(client, model_dir, cfg, ctx, max_new_tokens)
    held = list(existing.aliases) if existing else []
    if CHAMPION in held:  # an earlier attempt promoted it: re-deciding would compare it to itself
        decision = existing.tags.get(lineage.DECISION, "") if existing else ""
        promote = True
        reason = decision.removeprefix(f"{CHAMPION}: ") or "promoted by an interrupted attempt"
    else:
        promote, reason = decide(
            tuned_metrics[cfg.metric],
            base_metrics.get(cfg.metric),
            champion_score(client, cfg.model_name, cfg.metric, champion),
            cfg,
            _paired_failure(eval_dir, cfg),
        )
    alias = _set_alias(client, cfg.model_name, version, promote, reason, held)
    scores = (base_metrics, tuned_metrics)
    return _finish(client, cfg.model_name, version, alias, reason, lineage_tags, ctx.run_id, scores)


@task(name="register_runner_up", **RETRIED_IF_UNREACHABLE)
def register_runner_up(
    *,
    model_dir: str,
    base_metrics: dict[str, float],
    tuned_metrics: dict[str, float],
    registry: RegistryConfig,
    ctx: RunContext,
    reason: str,
    max_new_tokens: int = 64,
) -> Registration:
    """Registers a sweep's other candidate as a version with its lineage tags and model card,
    without an alias and without the promotion gate (`reason` says why: its rank); to compare
    or promote by hand later. Idempotent like `register_model`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ctx.tracking_uri)
    name = registry.model_name
    version, _, lineage_tags = _version_of_run(client, model_dir, registry, ctx, max_new_tokens)
    client.set_model_version_tag(name, version, lineage.DECISION, reason)
    scores = (base_metrics, tuned_metrics)
    return _finish(client, name, version, None, reason, lineage_tags, ctx.run_id, scores)


def _version_of_run(
    client: Any, model_dir: str, cfg: RegistryConfig, ctx: RunContext, max_new_tokens: int
) -> tuple[str, Any, dict[str, str]]:
    """The version registered from the run: a new one (its model uploaded and verified first),
    or the one an earlier attempt created (None unless so), and the run's lineage tags."""
    from tuneforge.model_registry import version_for_run

    run_id, tracking_uri = ctx.run_id, ctx.tracking_uri
    lineage_tags = {
        k: v
        for k, v in client.get_run(run_id).data.tags.items()
        if k.startswith(lineage.TAG_PREFIX) and k not in _OWN_RUN_TAGS
    }
    existing = version_for_run(client, cfg.model_name, run_id)
    if existing is None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint, package = _package(model_dir, lineage_tags, cfg, ctx, max_new_tokens, tmp)
            log_model_artifacts(checkpoint, package, run_id, tracking_uri)  # verified
        version = _create_version(client, cfg.model_name, run_id, tracking_uri, lineage_tags)
        pause_point("register:version-created")
        return version, None, lineage_tags
    # Registered by an earlier attempt whose upload was verified; finish it.
    for key, value in lineage_tags.items():
        if existing.tags.get(key) != value:
            client.set_model_version_tag(cfg.model_name, existing.version, key, value)
    return existing.version, existing, lineage_tags


def _finish(
    client: Any,
    name: str,
    version: str,
    alias: str | None,
    reason: str,
    lineage_tags: dict[str, str],
    run_id: str,
    scores: tuple[dict[str, float], dict[str, float]],
) -> Registration:
    """The model card on the version and the run, and the decision tagged on the run."""
    decision = f"{alias}: {reason}" if alias else reason
    card = model_card(name, version, decision, lineage_tags, *scores)
    client.update_model_version(name, version, description=card)
    client.log_text(run_id, card, "model_card.md")
    client.set_tag(run_id, lineage.REGISTERED_VERSION, f"{name}/{version}")
    client.set_tag(run_id, lineage.DECISION, decision)
    return Registration(name, version, alias, reason, f"models:/{name}/{version}")


def _package(
    model_dir: str,
    lineage_tags: dict[str, str],
    cfg: RegistryConfig,
    ctx: RunContext,
    max_new_tokens: int,
    tmp: str,
) -> tuple[str, ModelPackage]:
    """The checkpoint to register and what the version records beside it: an adapter with its
    base's lasting address, or (`registry.adapters: merged`) base and adapter merged."""
    trust = ctx.trust_remote_code
    full = ModelPackage(None, ctx.model_dtype, max_new_tokens, trust)
    config = Path(model_dir) / "adapter_config.json"
    if not config.is_file():
        return model_dir, full
    if cfg.adapters == "merged":
        merged = merged_checkpoint(Path(model_dir), Path(tmp) / "merged", trust)
        return str(merged), full
    base_path = json.loads(config.read_text())["base_model_name_or_path"]
    return model_dir, replace(full, base=adapter_base(base_path, lineage_tags))


def _paired_failure(eval_dir: str | None, cfg: RegistryConfig) -> str | None:
    """`paired_gate` on the per-row scores evaluation wrote beside the eval split."""
    if eval_dir is None or not (cfg.min_correct or cfg.max_p_value is not None):
        return None
    paths = [Path(eval_dir) / f"{label}_scores.jsonl" for label in (lineage.BASE, lineage.TUNED)]
    if not all(p.exists() for p in paths):
        return "the per-row scores the gate needs are missing (evaluate_model writes them)"
    return paired_gate(read_jsonl(paths[0]), read_jsonl(paths[1]), cfg)


def _create_version(
    client: Any, name: str, run_id: str, tracking_uri: str, tags: dict[str, str]
) -> str:
    """Creates the registered model if needed and a version from the run's uploaded model,
    with its lineage tags in the same call (a version never exists without them)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.artifact_utils import get_artifact_uri

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = get_artifact_uri(run_id, MODEL_ARTIFACT, tracking_uri=tracking_uri)
    return str(client.create_model_version(name, source, run_id, tags=tags).version)


def _set_alias(
    client: Any, name: str, version: str, promote: bool, reason: str, held: list[str]
) -> str:
    """Gives `version` the alias the gate decided, with the decision tag; returns the alias."""
    from tuneforge.model_registry import set_champion

    if promote:
        set_champion(client, name, version, reason)
        if CHALLENGER in held:  # it was challenger before the champion moved away from it
            client.delete_registered_model_alias(name, CHALLENGER)
        return CHAMPION
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, lineage.DECISION, f"{CHALLENGER}: {reason}")
    return CHALLENGER
