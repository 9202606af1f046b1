"""Register the tuned model as a version, and promote it only when it wins (the tasks).

The model is saved as a tuneforge pyfunc model (`tuneforge/packaging.py`), so
`mlflow.pyfunc.load_model("models:/NAME@champion").predict([...])` answers plain instructions.
The files are uploaded to the run first, every one checked by path and size, and only then is
a version registered from them, so a version never points at a half-uploaded model. The task is
safe to repeat: a re-run (or a Prefect retry) for the same run finds the version it registered
and finishes it (tags, alias, description) instead of adding another.

Promotion (`tuneforge/promotion.py`): the new version takes the `champion` alias when there is
no champion yet or when it beats the base and the champion on `tuned.<metric>` and passes the
paired checks; otherwise it takes the `challenger` alias and the champion stays. The decision
and its reason are tagged on the version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge import lineage
from tuneforge.config import RegistryConfig
from tuneforge.jsonl import read_jsonl
from tuneforge.lineage import CHALLENGER, CHAMPION
from tuneforge.packaging import (
    MODEL_ARTIFACT,
    IncompleteUpload,
    ModelPackage,
    adapter_base,
    log_model_artifacts,
    merged_checkpoint,
    model_card,
)
from tuneforge.pause_points import pause_point
from tuneforge.promotion import GuardResult, check_guards, decide, paired_gate
from tuneforge.run_context import RunContext
from tuneforge.tracking import is_unreachable


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str | None  # champion or challenger; None for a sweep's runner-up
    reason: str
    model_uri: str  # models:/NAME/VERSION
    # registry.guards checked (GuardResult.as_dict() each); empty without guards.
    guards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def decision(self) -> str:
        held = f"is {self.alias}" if self.alias else "has no alias"
        return f"{self.name} version {self.version} {held}: {self.reason}"


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
    guards = guard_results(eval_dir, cfg, base_metrics, tuned_metrics, champion)
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
        failed = [g for g in guards if not g.passed]
        if promote and failed:
            promote = False
            more = f" (and {len(failed) - 1} more guards)" if len(failed) > 1 else ""
            reason = f"{reason}, but {failed[0].describe()}{more}"
    alias = _set_alias(client, cfg.model_name, version, promote, reason, held)
    scores = (base_metrics, tuned_metrics)
    checked = [g.as_dict() for g in guards]
    return _finish(
        client, cfg.model_name, version, alias, reason, lineage_tags, ctx.run_id, scores, checked
    )


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
    guards: list[dict[str, Any]] = (),
) -> Registration:
    """The model card on the version and the run, and the decision (and guards) tagged on the
    run and the version."""
    decision = f"{alias}: {reason}" if alias else reason
    card = model_card(name, version, decision, lineage_tags, *scores, list(guards))
    client.update_model_version(name, version, description=card)
    client.log_text(run_id, card, "model_card.md")
    client.set_tag(run_id, lineage.REGISTERED_VERSION, f"{name}/{version}")
    client.set_tag(run_id, lineage.DECISION, decision)
    if guards:
        checked = json.dumps(list(guards))
        client.set_tag(run_id, lineage.GUARDS, checked)
        client.set_model_version_tag(name, version, lineage.GUARDS, checked)
    return Registration(name, version, alias, reason, f"models:/{name}/{version}", list(guards))


def guard_results(
    eval_dir: str | None,
    cfg: RegistryConfig,
    base: dict[str, float],
    tuned: dict[str, float],
    champion: dict[str, Any] | None,
) -> list[GuardResult]:
    """`registry.guards` checked against the champion's scores on this run's data, else the
    base's, from the metrics and the per-row files evaluation wrote beside the eval split."""
    if not cfg.guards:
        return []
    if champion and champion.get("metrics"):
        label, reference = lineage.CHAMPION_SCORES, champion["metrics"]
        against = f"champion v{champion['version']}"
    else:
        label, reference, against = lineage.BASE, base, "the base"
        if champion:
            against = "the base (the champion could not be scored here)"
    rows: dict[str, list[dict[str, Any]]] = {lineage.TUNED: [], label: []}
    for who in rows:
        for kind in ("scores", "bench"):
            path = Path(eval_dir or ".") / f"{who}_{kind}.jsonl"
            if eval_dir and path.exists():
                rows[who] += read_jsonl(path)
    return check_guards(cfg.guards, tuned, reference, against, rows[lineage.TUNED], rows[label])


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
    from tuneforge.model_registry import move_alias, set_champion

    if promote:
        set_champion(client, name, version, reason)
        if CHALLENGER in held:  # it was challenger before the champion moved away from it
            move_alias(client, name, CHALLENGER, None, f"version {version} became {CHAMPION}")
        return CHAMPION
    move_alias(client, name, CHALLENGER, version, reason)
    client.set_model_version_tag(name, version, lineage.DECISION, f"{CHALLENGER}: {reason}")
    return CHALLENGER
