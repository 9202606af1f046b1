"""What a registered version is made of: the checkpoint (or adapter and its base's lasting
address) saved as a tuneforge pyfunc model, uploaded to the run with every file checked by path
and size before a version may point at it, and its model card.

    uri = log_model_artifacts(model_dir, ModelPackage(None, "float32", 24, False), run_id, uri)

The registering task (`tasks/register.py`) decides whether and how to register; this module
only builds and uploads. The files a version holds are laid out by `tuneforge/serving.py`.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge import lineage
from tuneforge.models import load_pretrained

MODEL_ARTIFACT = "model"


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


# One of each input form a version answers (tuneforge.serving.conversations): a plain prompt, an
# Alpaca record, a prompt record and chat turns.
INPUT_EXAMPLE = [
    "Convert to uppercase.\n\nsalt",
    {"instruction": "Convert to uppercase.", "input": "salt"},
    {"prompt": "Name a colour."},
    {"messages": [{"role": "user", "content": "Give the opposite of the word.\n\nhot"}]},
]


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
            # Shown in the MLflow UI and written as serving_input_example.json: every form a
            # request may take (with a signature given, saved without running the model).
            input_example=INPUT_EXAMPLE,
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


def model_card(
    name: str,
    version: str,
    reason: str,
    tags: dict,
    base: dict,
    tuned: dict,
    guards: list[dict[str, Any]] = (),
) -> str:
    """A markdown model card: what this version is, where it came from, how it scored, and
    what its guards found (`GuardResult.as_dict()` each)."""
    table = "\n".join(
        f"| {k.removeprefix(lineage.TAG_PREFIX)} | {v} |" for k, v in sorted(tags.items())
    )
    rows = "\n".join(
        f"| {k} | {base.get(k, float('nan')):.4f} | {v:.4f} |"
        for k, v in tuned.items()
        if k != "examples"
    )
    guarded = ""
    if guards:
        lines = "\n".join(
            f"| {g['metric']} | {_score(g['reference'])} ({g['against']}) | {_score(g['tuned'])} "
            f"| {g['max_drop']:g} | {'passed' if g['passed'] else 'FAILED'} |"
            for g in guards
        )
        guarded = (
            "## Guards\n\n| metric | reference | tuned | max drop | result |\n"
            f"|---|---|---|---|---|\n{lines}\n\n"
        )
    return (
        f"# {name} version {version}\n\n"
        f"Decision: {reason}\n\n"
        f"## Evaluation (held-back split)\n\n| metric | base | tuned |\n|---|---|---|\n{rows}\n\n"
        f"{guarded}"
        f"## Lineage\n\n| key | value |\n|---|---|\n{table}\n"
    )


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
