"""The `export_version` task: a registered version's exports (`registry.export`: merged, a
vLLM-ready adapter, GGUF) logged as artifacts of its run, their paths and sizes tagged on the
version (`tuneforge.exports`), for a serving engine to fetch."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tuneforge import lineage
from tuneforge.config import RegistryConfig
from tuneforge.exports.version import ExportError, export_version
from tuneforge.run_context import RunContext
from tuneforge.tasks.register import RETRIED_IF_UNREACHABLE, Registration


@task(name="export_version", **RETRIED_IF_UNREACHABLE)
def export_registered(
    *, registration: Registration, registry: RegistryConfig, ctx: RunContext
) -> dict[str, Any]:
    """Exports the version in each of `registry.export` and logs them under `exports/<format>`
    of its run; returns (and tags) `{format: {"artifact", "bytes"} or {"skipped": why}}`. An
    adapter export of a full checkpoint is skipped, not failed: the version stands."""
    from mlflow.tracking import MlflowClient

    from tuneforge.serving import download

    client = MlflowClient(ctx.tracking_uri)
    exported: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tuneforge-exports-") as tmp:
        root = download(registration.model_uri, Path(tmp) / "version")
        for entry in registry.export:
            fmt, _, precision = entry.partition(":")
            out = Path(tmp) / "out" / entry.replace(":", "-")
            name = f"{registration.name}-v{registration.version}"
            try:
                path = export_version(root, fmt, out, precision or "f16", name)
            except ExportError as exc:
                get_run_logger().warning("registry.export %s skipped: %s", entry, exc)
                exported[entry] = {"skipped": str(exc)}
                continue
            artifact = f"exports/{entry.replace(':', '-')}"
            client.log_artifacts(ctx.run_id, str(out), artifact)
            size = path.stat().st_size if path.is_file() else _bytes(path)
            where = f"{artifact}/{path.name}" if path.is_file() else artifact
            exported[entry] = {"artifact": where, "bytes": size}
            shutil.rmtree(out, ignore_errors=True)
    tag = json.dumps(exported)
    client.set_model_version_tag(registration.name, registration.version, lineage.EXPORTS, tag)
    client.set_tag(ctx.run_id, lineage.EXPORTS, tag)
    return exported


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
