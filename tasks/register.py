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

from prefect import task

from tasks.model_source import load_pretrained
from tuneforge.config import RegistryConfig
from tuneforge.prompts import render_prompt

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str  # champion or challenger
    reason: str
    model_uri: str  # models:/NAME/VERSION


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "tokenizers", "peft")
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in packages]


def log_model_artifacts(model_dir: str, run_id: str, tracking_uri: str) -> str:
    """Saves the checkpoint as an MLflow transformers model under the run; returns its URI."""
    import mlflow.transformers
    from mlflow.tracking import MlflowClient

    # It warns that a local checkpoint has no hub model card or license: noise for us.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    model, tokenizer = load_pretrained(model_dir)
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


def decide(
    candidate: float, champion: float | None, metric: str, higher_is_better: bool
) -> tuple[bool, str]:
    """Whether the candidate should become champion, and why (one sentence)."""
    if champion is None:
        return True, f"no current champion; {metric}={candidate:.4f}"
    better = candidate > champion if higher_is_better else candidate < champion
    relation = "beats" if better else "does not beat"
    return better, f"{metric}={candidate:.4f} {relation} champion's {champion:.4f}"


def champion_metric(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """The current champion's version and its `tuned.<metric>` (None, None without one)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    value = client.get_run(version.run_id).data.metrics.get(f"tuned.{metric}")
    return version.version, value


@task(name="register_model")
def register_model(
    model_dir: str,
    run_id: str,
    tuned_metrics: dict[str, float],
    cfg: RegistryConfig,
    tracking_uri: str,
) -> Registration:
    """Registers the tuned model as a new version and moves `champion` to it only if it wins."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if cfg.metric not in tuned_metrics:
        raise KeyError(f"registry.metric {cfg.metric!r} is not among {sorted(tuned_metrics)}")
    source_uri = log_model_artifacts(model_dir, run_id, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    champion_version, champion_value = champion_metric(client, cfg.model_name, cfg.metric)

    version = mlflow.register_model(source_uri, cfg.model_name).version
    if champion_value is None and champion_version is not None:
        promote, reason = True, f"champion v{champion_version} has no tuned.{cfg.metric}"
    else:
        promote, reason = decide(
            tuned_metrics[cfg.metric], champion_value, cfg.metric, cfg.higher_is_better
        )
    alias = CHAMPION if promote else CHALLENGER
    client.set_registered_model_alias(cfg.model_name, alias, version)
    client.set_model_version_tag(
        cfg.model_name, version, "tuneforge.decision", f"{alias}: {reason}"
    )
    for key, value in tuned_metrics.items():
        client.set_model_version_tag(cfg.model_name, version, f"metric.{key}", f"{value:.6g}")
    client.set_tag(run_id, "tuneforge.registered_version", f"{cfg.model_name}/{version}")
    return Registration(
        cfg.model_name, str(version), alias, reason, f"models:/{cfg.model_name}/{version}"
    )
