"""The commands that take a registered version to serving: exports and an OpenAI-compatible
server.

    tuneforge export models:/tuneforge-demo@champion --format merged --out exported/ [--check]
    tuneforge export models:/tuneforge-demo/3 --format gguf --precision q8_0 --out exported/
    tuneforge serve models:/tuneforge-demo@champion [--host 127.0.0.1] [--port 8000]

A version is found through `--tracking-uri`, MLFLOW_TRACKING_URI, or ./mlflow.db.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneforge.cli.output import JsonOption, fail, out, print_result

TrackingOption = Annotated[
    str | None, typer.Option("--tracking-uri", help="Default: MLFLOW_TRACKING_URI or ./mlflow.db")
]


def export(
    model: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION")],
    format_: Annotated[
        str, typer.Option("--format", help="merged, adapter (vLLM-ready PEFT) or gguf")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Where the export goes (a folder)")],
    precision: Annotated[
        str, typer.Option(help="gguf: f16, bf16 or q8_0 (8-bit, about half of f16's size)")
    ] = "f16",
    check: Annotated[
        bool,
        typer.Option(help="Compare the export's greedy answers and logits with the version's"),
    ] = False,
    data: Annotated[
        str | None,
        typer.Option(help="--check's prompts: a data file (default: the version's own data)"),
    ] = None,
    rows: Annotated[int, typer.Option(help="--check: prompts compared")] = 16,
    tracking_uri: TrackingOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export a registered version for a serving engine: a merged Hugging Face checkpoint, a
    PEFT adapter vLLM can hot-load, or a GGUF file for llama.cpp and Ollama."""
    from tuneforge.exports.version import FORMATS, ExportError, export_version
    from tuneforge.serving import ModelLoadError, download

    if format_ not in FORMATS:
        fail(f"--format {format_!r}: use one of {', '.join(FORMATS)}")
    if precision not in ("f16", "bf16", "q8_0"):
        fail(f"--precision {precision!r}: use f16, bf16 or q8_0")
    if rows < 1:
        fail(f"--rows {rows}: compare at least one prompt")
    _use_registry(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="tuneforge-export-") as tmp:
        try:
            root = download(model, Path(tmp))
            exported = export_version(root, format_, out_dir, precision, _safe_name(model))
            summary: dict[str, Any] = {"model": model, "format": format_, "path": str(exported)}
            summary["bytes"] = _size(exported)
            if check:
                summary["check"] = _check(
                    root, exported, format_, data or _recorded_source(model), rows, Path(tmp)
                )
        except (ModelLoadError, ExportError) as exc:
            fail(str(exc))
        except ModuleNotFoundError as exc:
            fail(f"--format {format_} needs {exc.name}: pip install 'tuneforge[export]'")

    def render(result: dict[str, Any]) -> None:
        out.print(f"{result['format']}: {result['path']} ({result['bytes']:,} bytes)", markup=False)
        found = result.get("check")
        if found:
            out.print(
                f"check on {found['prompts']} prompts: {found['same_answers']} same greedy "
                f"answers, largest logit difference {found['max_logit_difference']:.3g}",
                markup=False,
            )

    print_result(summary, render)
    found = summary.get("check")
    if found and format_ != "gguf" and not found["identical"]:
        fail(f"{format_} export does not reproduce {model} exactly: {found}", code=1)


def serve(
    model: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback serves the network")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length when not asked")] = 256,
    max_batch: Annotated[
        int, typer.Option(help="Waiting requests answered as one batch (not streamed ones)")
    ] = 8,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads (default: all cores but one)")
    ] = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Serve a registered version over an OpenAI-compatible HTTP API (/v1/models,
    /v1/chat/completions, /v1/completions; streaming), answering greedily."""
    from tuneforge.openai_server import serve as run_server
    from tuneforge.serving import ModelLoadError

    _use_registry(tracking_uri)
    try:
        run_server(
            model,
            host,
            port,
            max_new_tokens=max_new_tokens,
            max_batch=max_batch,
            num_threads=threads,
        )
    except ModelLoadError as exc:
        fail(str(exc))


def _use_registry(tracking_uri: str | None) -> None:
    from tuneforge.tracking import resolve_tracking_uri

    resolve_tracking_uri(tracking_uri)  # sets MLflow's default for the downloads


def _safe_name(uri: str) -> str:
    """`models:/tuneforge-demo@champion` -> `tuneforge-demo-champion`: a file name."""
    import re

    return re.sub(r"[^\w.-]+", "-", uri.removeprefix("models:/")).strip("-") or "model"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check(
    root: Path, exported: Path, fmt: str, data: str, rows: int, scratch: Path
) -> dict[str, Any]:
    """The export against the version on `rows` prompts of `data` (by default the data the
    version's run trained on, found through its lineage), spread over its task families."""
    from dataclasses import asdict

    from tuneforge.data.reading import read_rows
    from tuneforge.data.validation import validate_rows
    from tuneforge.exports.parity import check_export
    from tuneforge.records import spread

    valid, _ = validate_rows(read_rows(data), max_chars=100_000, source=data)
    chat = [r for r in valid if "messages" in r]
    if not chat:
        fail(f"--data {data}: no prompt/response rows to compare answers on")
    parity = check_export(root, exported, fmt, spread(chat, rows), scratch)
    return {**asdict(parity), "identical": parity.identical}


def _recorded_source(model_uri: str) -> str:
    from mlflow.tracking import MlflowClient

    from tuneforge import lineage
    from tuneforge.model_registry import RegistryError, resolve_version

    client = MlflowClient()
    try:
        run_id = resolve_version(client, model_uri).run_id
    except RegistryError:
        run_id = None
    source = client.get_run(run_id).data.tags.get(lineage.DATA_SOURCE) if run_id else None
    if not source or not Path(source.removeprefix("hf:")).exists():
        fail(f"--check needs --data: the version's own data ({source or 'unknown'}) is not here")
    return source
