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
        str | None,
        typer.Option(help="gguf: f16 (default), bf16 or q8_0 (8-bit, about half of f16's size)"),
    ] = None,
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
    from tuneforge.exports.version import FORMATS, ExportError, export_version, gguf_missing
    from tuneforge.serving import ModelLoadError, download

    if format_ not in FORMATS:
        fail(f"--format {format_!r}: use one of {', '.join(FORMATS)}")
    if precision is not None and format_ != "gguf":
        fail(f"--precision: a gguf setting; a {format_} export keeps the version's dtype")
    if precision not in (None, "f16", "bf16", "q8_0"):
        fail(f"--precision {precision!r}: use f16, bf16 or q8_0")
    if rows < 1:
        fail(f"--rows {rows}: compare at least one prompt")
    if format_ == "gguf" and gguf_missing():
        fail(str(gguf_missing()))
    _use_registry(tracking_uri)
    # The prompts first: a bad --data fails in seconds, not after a long export.
    records = _check_records(data or _recorded_source(model), rows) if check else []
    with tempfile.TemporaryDirectory(prefix="tuneforge-export-") as tmp:
        try:
            root = download(model, Path(tmp))
            exported = export_version(root, format_, out_dir, precision or "f16", _safe_name(model))
            summary: dict[str, Any] = {"model": model, "format": format_, "path": str(exported)}
            summary["bytes"] = _size(exported)
            if check:
                summary["check"] = _check(root, exported, format_, records, Path(tmp))
        except (ModelLoadError, ExportError) as exc:
            fail(str(exc))

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

    for option, value in (("--max-new-tokens", max_new_tokens), ("--max-batch", max_batch)):
        if value < 1:
            fail(f"{option} {value}: must be at least 1")
    if threads is not None and threads < 1:
        fail(f"--threads {threads}: must be at least 1")
    if not 0 <= port < 65536:
        fail(f"--port {port}: not a TCP port")
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


def _check_records(data: str, rows: int) -> list[dict[str, Any]]:
    """`rows` chat records of `data` (by default the data the version's run trained on, found
    through its lineage), spread over its task families."""
    from tuneforge.data.reading import DataLoadError, read_rows
    from tuneforge.data.validation import validate_rows
    from tuneforge.records import spread

    try:
        valid, _ = validate_rows(read_rows(data), max_chars=100_000, source=data)
    except (DataLoadError, ValueError) as exc:
        fail(f"--data: {exc}")
    chat = [r for r in valid if "messages" in r]
    if not chat:
        fail(f"--data {data}: no prompt/response rows to compare answers on")
    return spread(chat, rows)


def _check(
    root: Path, exported: Path, fmt: str, records: list[dict[str, Any]], scratch: Path
) -> dict[str, Any]:
    """The export against the version on the records' prompts."""
    from dataclasses import asdict

    from tuneforge.exports.parity import check_export

    try:
        parity = check_export(root, exported, fmt, records, scratch)
    except (OSError, ValueError) as exc:  # the export unreadable, its tokenizer unlike ours
        fail(f"--check: {exported}: {exc}")
    return {**asdict(parity), "identical": parity.identical}


def _recorded_source(model_uri: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tuneforge import lineage
    from tuneforge.model_registry import RegistryError, resolve_version

    client = MlflowClient()
    try:
        run_id = resolve_version(client, model_uri).run_id
        source = client.get_run(run_id).data.tags.get(lineage.DATA_SOURCE) if run_id else None
    except RegistryError as exc:  # no such model or version: said before anything is fetched
        fail(str(exc))
    except MlflowException:  # its run deleted: only --data can say what to compare on
        source = None
    if not source or not Path(source.removeprefix("hf:")).exists():
        fail(f"--check needs --data: the version's own data ({source or 'unknown'}) is not here")
    return source
