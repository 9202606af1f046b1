"""The MLflow model registry as tuneforge uses it: champion/challenger aliases, the champion's
history (for rollback), lineage tags, and the read side behind `tuneforge models ...`.

Every function takes an `MlflowClient`, so it works the same against `./mlflow.db` and a
tracking server (`MLFLOW_TRACKING_URI=http://...`).

The champion's history is a registered-model tag, `tuneforge.champion_history`
(`lineage.CHAMPION_HISTORY`): the versions that held `champion`, oldest first (what rollback
goes back along). Moving the alias is one registry call (atomic for readers of
`models:/NAME@champion`); the history is written right after it.

MLflow overwrites an alias without a trace, so every move of one (`move_alias`: promotion by
a retrain, `promote`, `rollback`, a new challenger) also writes a tag of its own on the
registered model, `tuneforge.alias_move.<ns>-<random>`: when, by whom, from which version to
which, and why. One tag per move: no read-modify-write for two writers to race on, and no
value that grows past MLflow's tag length. `alias_history` reads them back in order.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import time
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
        if exc.get_http_status_code() in (401, 403):
            raise  # the server refused who asked, not the URI: the caller names the server
        raise RegistryError(f"{uri}: {exc.message.splitlines()[0]}") from None


def champion_history(client: MlflowClient, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return [v for v in tags.get(lineage.CHAMPION_HISTORY, "").split(",") if v]


def alias_holder(client: MlflowClient, name: str, alias: str) -> Any | None:
    """The version `alias` points at, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def current_champion(client: MlflowClient, name: str) -> Any | None:
    return alias_holder(client, name, lineage.CHAMPION)


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


def whoami() -> str:
    """Who moves an alias: the tracking server's user (MLFLOW_TRACKING_USERNAME, checked by a
    server with auth), else the local account."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def move_alias(
    client: MlflowClient, name: str, alias: str, version: str | None, why: str
) -> dict[str, Any]:
    """Points `alias` at `version` (None: removes it) and records the move; returns the record.
    The alias moves first: a move the server refuses (no permission) leaves no record."""
    held = alias_holder(client, name, alias)
    before = None if held is None else str(held.version)
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)
    at = time.time_ns()
    record = {
        "alias": alias,
        "from": before,
        "to": None if version is None else str(version),
        "by": whoami(),
        "why": why,
        "at": at / 1e9,
    }
    key = f"{lineage.ALIAS_MOVE}{at:020d}-{secrets.token_hex(3)}"
    client.set_registered_model_tag(name, key, json.dumps(record))
    return record


def alias_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of `name`, oldest first."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if exc.get_http_status_code() in (401, 403):
            raise
        raise RegistryError(f"{name}: {exc.message.splitlines()[0]}") from None
    moves = sorted((k, v) for k, v in tags.items() if k.startswith(lineage.ALIAS_MOVE))
    return [json.loads(value) for _, value in moves]


def set_champion(client: MlflowClient, name: str, version: str, reason: str) -> None:
    """Moves `champion` to `version` and records it in the history."""
    move_alias(client, name, lineage.CHAMPION, version, reason)
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
    current = str(champion.version)  # an int from a local (SQLite) registry
    if history and history[-1] == current:
        history = history[:-1]
    if not history:
        raise RegistryError(f"{name}: version {current} is the first champion")
    previous = history[-1]
    move_alias(client, name, lineage.CHAMPION, previous, f"rolled back from version {current}")
    client.set_registered_model_tag(name, lineage.CHAMPION_HISTORY, ",".join(history))
    client.set_model_version_tag(name, current, lineage.ROLLED_BACK, "true")
    return current, previous


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
