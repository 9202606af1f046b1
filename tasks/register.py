"""Log the tuned model to MLflow, register a version, and promote it only when it wins.

The model is saved in MLflow's transformers flavour (safetensors weights plus tokenizer) with a
prompt template, so `mlflow.pyfunc.load_model("models:/NAME@champion").predict([...])` answers
plain instructions. The files are uploaded to the run first and the version is registered from
them afterwards, so a version never points at a half-uploaded model.

Promotion: the new version takes the `champion` alias when there is no champion yet or when it
beats the champion on `tuned.<metric>`; otherwise it takes the `challenger` alias and the
champion stays. The decision and its reason are tagged on the version.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from tasks.model_source import load_pretrained
from tuneforge.config import RegistryConfig
from tuneforge.model_registry import CHALLENGER, CHAMPION
from tuneforge.prompts import render_prompt

MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str  # champion or challenger
    reason: str
    model_uri: str  # models:/NAME/VERSION

    @property
    def decision(self) -> str:
        return f"{self.name} version {self.version} is {self.alias}: {self.reason}"


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "tokenizers", "peft")
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in packages]


def log_model_artifacts(
    model_dir: str, run_id: str, tracking_uri: str, trust_remote_code: bool = False
) -> str:
    """Saves the checkpoint as an MLflow transformers model under the run; returns its URI."""
    import mlflow.transformers
    from mlflow.tracking import MlflowClient

    # It warns that a local checkpoint has no hub model card or license: noise for us.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    model, tokenizer = load_pretrained(model_dir, trust_remote_code=trust_remote_code)
    template = render_prompt([{"role": "user", "content": "{prompt}"}], tokenizer)
    # A PEFT adapter is logged alone, pointing at its base, instead of with a copy of the base.
    peft_config = getattr(model, "peft_config", {}).get("default")
    base_model_path = peft_config.base_model_name_or_path if peft_config else None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MODEL_ARTIFACT
        mlflow.transformers.save_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            path=str(local),
            task="text-generation",
            prompt_template=template,
            model_config={"return_full_text": False, "do_sample": False},
            pip_requirements=_pip_requirements(),
            base_model_path=base_model_path,
        )
        client = MlflowClient(tracking_uri)
        client.log_artifacts(run_id, str(local), artifact_path=MODEL_ARTIFACT)
        uploaded = {Path(f.path).name for f in client.list_artifacts(run_id, MODEL_ARTIFACT)}
        missing = {p.name for p in local.iterdir()} - uploaded
        if missing:
            raise RuntimeError(
                f"model upload to run {run_id} incomplete: missing {sorted(missing)}"
            )
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def _gain(candidate: float, reference: float, higher_is_better: bool) -> float:
    return candidate - reference if higher_is_better else reference - candidate


def decide(
    candidate: float, base: float | None, champion: float | None, cfg: RegistryConfig
) -> tuple[bool, str]:
    """Whether the candidate should become champion, and why (one sentence).

    It must beat the base by more than `min_improvement_over_base` and the current champion
    (if any) by more than `min_improvement`, on `tuned.<metric>` in the configured direction.
    """
    metric, up = cfg.metric, cfg.higher_wins
    if base is not None and _gain(candidate, base, up) <= cfg.min_improvement_over_base:
        margin = (
            f" by more than {cfg.min_improvement_over_base}"
            if cfg.min_improvement_over_base
            else ""
        )
        return False, f"{metric}={candidate:.4f} does not beat the base's {base:.4f}{margin}"
    if champion is None:
        return True, f"no current champion; {metric}={candidate:.4f}"
    if _gain(candidate, champion, up) <= cfg.min_improvement:
        margin = f" by more than {cfg.min_improvement}" if cfg.min_improvement else ""
        return False, f"{metric}={candidate:.4f} does not beat champion's {champion:.4f}{margin}"
    return True, f"{metric}={candidate:.4f} beats champion's {champion:.4f}"


def model_card(name: str, version: str, reason: str, tags: dict, base: dict, tuned: dict) -> str:
    """A markdown model card: what this version is, where it came from, how it scored."""
    lineage = "\n".join(
        f"| {k.removeprefix('tuneforge.')} | {v} |" for k, v in sorted(tags.items())
    )
    rows = "\n".join(
        f"| {k} | {base.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in tuned.items()
        if k != "examples"
    )  # fmt: skip
    return (
        f"# {name} version {version}\n\n"
        f"Decision: {reason}\n\n"
        f"## Evaluation (held-back split)\n\n| metric | base | tuned |\n|---|---|---|\n{rows}\n\n"
        f"## Lineage\n\n| key | value |\n|---|---|\n{lineage}\n"
    )


@task(name="check_unchanged")
def unchanged_since_champion(
    model_name: str, data_fingerprint: str, config_hash: str, tracking_uri: str, run_id: str
) -> str | None:
    """Why retraining can be skipped (the champion was trained on the same data with the same
    config), or None. A skip is tagged on the run as `tuneforge.skipped`."""
    from mlflow.tracking import MlflowClient

    from tuneforge.model_registry import current_champion

    client = MlflowClient(tracking_uri)
    champion = current_champion(client, model_name)
    if champion is None:
        return None
    tags = champion.tags
    if tags.get("tuneforge.data_fingerprint") != data_fingerprint:
        return None
    if tags.get("tuneforge.config_hash") != config_hash:
        return None
    reason = (
        f"data {data_fingerprint} and config {config_hash} are those of {model_name} "
        f"version {champion.version} (champion); nothing to retrain (force: true overrides)"
    )
    client.set_tag(run_id, "tuneforge.skipped", reason)
    return reason


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
    return client.get_run(champion.run_id).data.metrics.get(f"tuned.{metric}")


@task(name="register_model")
def register_model(
    model_dir: str,
    run_id: str,
    base_metrics: dict[str, float],
    tuned_metrics: dict[str, float],
    champion: dict[str, Any] | None,
    cfg: RegistryConfig,
    tracking_uri: str,
    trust_remote_code: bool = False,
) -> Registration:
    """Registers the tuned model as a new version with its lineage tags and model card, and
    moves `champion` to it only when it passes the promotion gate (else: `challenger`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tuneforge.model_registry import set_champion

    if cfg.metric not in tuned_metrics:
        raise ValueError(f"registry.metric {cfg.metric!r} is not among {sorted(tuned_metrics)}")
    source_uri = log_model_artifacts(model_dir, run_id, tracking_uri, trust_remote_code)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    version = str(mlflow.register_model(source_uri, cfg.model_name).version)

    lineage = {
        k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("tuneforge.")
    }
    for key, value in lineage.items():
        client.set_model_version_tag(cfg.model_name, version, key, value)

    promote, reason = decide(
        tuned_metrics[cfg.metric],
        base_metrics.get(cfg.metric),
        champion_score(client, cfg.model_name, cfg.metric, champion),
        cfg,
    )
    if promote:
        set_champion(client, cfg.model_name, version, reason)
    else:
        client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
        client.set_model_version_tag(
            cfg.model_name, version, "tuneforge.decision", f"{CHALLENGER}: {reason}"
        )
    alias = CHAMPION if promote else CHALLENGER

    card = model_card(
        cfg.model_name, version, f"{alias}: {reason}", lineage, base_metrics, tuned_metrics
    )
    client.update_model_version(cfg.model_name, version, description=card)
    client.log_text(run_id, card, "model_card.md")
    client.set_tag(run_id, "tuneforge.registered_version", f"{cfg.model_name}/{version}")
    client.set_tag(run_id, "tuneforge.decision", f"{alias}: {reason}")
    return Registration(
        cfg.model_name, version, alias, reason, f"models:/{cfg.model_name}/{version}"
    )
