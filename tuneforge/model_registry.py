"""The MLflow model registry as tuneforge uses it: champion/challenger aliases, the champion's
history (for rollback), lineage tags, and the read side behind `tuneforge models ...`.

Every function takes an `MlflowClient`, so it works the same against `./mlflow.db` and a
tracking server (`MLFLOW_TRACKING_URI=http://...`).

The champion's history is a registered-model tag, `tuneforge.champion_history`
(`lineage.CHAMPION_HISTORY`): the versions that held `champion`, oldest first. Moving the alias
is one registry call (atomic for readers of `models:/NAME@champion`); the history is written
right after it.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuneforge import lineage


class RegistryError(ValueError):
    """A registry request that cannot be honoured; the message is one line."""


def parse_model_uri(uri: str) -> tuple[str, str]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (NAME, ALIAS-or-VERSION)."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, _, ref = body.partition("@")
    else:
        name, _, ref = body.rpartition("/")
    if not name or not ref:
        raise RegistryError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, ref


def resolve_version(client: MlflowClient, uri: str) -> Any:
    """The model version a `models:/` URI points at now (aliases resolved)."""
    name, ref = parse_model_uri(uri)
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise RegistryError(f"{uri}: {exc.message.splitlines()[0]}") from None


def champion_history(client: MlflowClient, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return [v for v in tags.get(lineage.CHAMPION_HISTORY, "").split(",") if v]


def current_champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, lineage.CHAMPION)
    except MlflowException:
        return None


def version_for_run(client: MlflowClient, name: str, run_id: str) -> Any | None:
    """The version of `name` registered from the MLflow run `run_id`, or None: how a repeated
    registration finds the one an interrupted attempt created instead of adding another."""
    if "'" in name:  # cannot be quoted in a filter; config names never have one
        raise RegistryError(f"{name}: a model name with a quote is not supported")
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        return None
    # Fetched again: not every store fills in aliases on search results.
    return client.get_model_version(name, min(int(v.version) for v in found))


def set_champion(client: MlflowClient, name: str, version: str, reason: str) -> None:
    """Moves `champion` to `version` and records it in the history."""
    client.set_registered_model_alias(name, lineage.CHAMPION, version)
    history = [v for v in champion_history(client, name) if v != str(version)]
    client.set_registered_model_tag(
        name, lineage.CHAMPION_HISTORY, ",".join([*history, str(version)])
    )
    client.set_model_version_tag(name, version, lineage.DECISION, f"{lineage.CHAMPION}: {reason}")


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Gives `champion` back to the previous champion; returns (from_version, to_version)."""
    history = champion_history(client, name)
    champion = current_champion(client, name)
    if champion is None:
        raise RegistryError(f"{name}: has no champion to roll back")
    if history and history[-1] == champion.version:
        history = history[:-1]
    if not history:
        raise RegistryError(f"{name}: version {champion.version} is the first champion")
    previous = history[-1]
    client.set_registered_model_alias(name, lineage.CHAMPION, previous)
    client.set_registered_model_tag(name, lineage.CHAMPION_HISTORY, ",".join(history))
    client.set_model_version_tag(name, champion.version, lineage.ROLLED_BACK, "true")
    return champion.version, previous


def version_summary(client: MlflowClient, version: Any) -> dict[str, Any]:
    """One version as plain data: aliases, metrics of its run, lineage and decision tags, and
    the guards its registration checked."""
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return {
        "guards": json.loads(version.tags.get(lineage.GUARDS, "[]")),
        "name": version.name,
        "version": version.version,
        "aliases": list(version.aliases),
        "run_id": version.run_id,
        "created": version.creation_timestamp,
        "source": version.source,
        "metrics": {
            k: v
            for k, v in sorted(metrics.items())
            if k.startswith((f"{lineage.BASE}.", f"{lineage.TUNED}."))
        },
        "tags": dict(sorted(version.tags.items())),
    }


def list_models(client: MlflowClient) -> list[dict[str, Any]]:
    """Registered models with their aliases and the champion's headline metrics."""
    rows = []
    for model in client.search_registered_models(max_results=1000):
        champion = current_champion(client, model.name)
        metrics = version_summary(client, champion)["metrics"] if champion else {}
        versions = client.search_model_versions(f"name='{model.name}'")
        rows.append(
            {
                "name": model.name,
                "aliases": dict(model.aliases),
                "latest_version": max((int(v.version) for v in versions), default=None),
                "champion": champion.version if champion else None,
                "champion_metrics": {
                    k: v
                    for k, v in metrics.items()
                    if k.startswith(f"{lineage.TUNED}.") and k.count(".") == 1
                },
            }
        )
    return rows


def show(client: MlflowClient, name: str, version: str | None = None) -> dict[str, Any]:
    """A version's details (the champion when `version` is None), with its artifacts."""
    uri = f"models:/{name}/{version}" if version else f"models:/{name}@{lineage.CHAMPION}"
    found = resolve_version(client, uri)
    summary = version_summary(client, found)
    summary["artifacts"] = [a.path for a in client.list_artifacts(found.run_id, "model")]
    return summary


def compare(client: MlflowClient, name: str, a: str, b: str) -> dict[str, Any]:
    """Metrics of two versions side by side, with the difference b - a."""
    first = version_summary(client, resolve_version(client, f"models:/{name}/{a}"))
    second = version_summary(client, resolve_version(client, f"models:/{name}/{b}"))
    keys = sorted(set(first["metrics"]) | set(second["metrics"]))
    rows = []
    for key in keys:
        x, y = first["metrics"].get(key), second["metrics"].get(key)
        rows.append({"metric": key, a: x, b: y, "delta": None if None in (x, y) else y - x})
    return {"name": name, "versions": [a, b], "metrics": rows}
