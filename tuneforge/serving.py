"""A registered tuneforge model as MLflow loads it, in any process, on any machine:

    model = mlflow.pyfunc.load_model("models:/tuneforge-demo@champion")
    model.predict(["Convert to uppercase.\\n\\nsalt"])                      # plain prompts
    model.predict([{"instruction": "Convert to uppercase.", "input": "salt"}])  # Alpaca records
    model.predict([{"messages": [{"role": "user", "content": "Hi"}]}])        # chat turns
    model.predict([...], params={"max_new_tokens": 64})

Each returns one greedy answer (a string) per input. Prompts are rendered exactly as training
and evaluation render them (`tuneforge.prompts`: the tokenizer's chat template, else a plain
Alpaca-style template). Any other dict is refused naming its keys, never answered with garbage.

This file is the model's code (MLflow "models from code"): registration logs it with every
version, with `tuneforge/prompts.py` beside it, and it imports nothing else of tuneforge, so a
version loads wherever torch, transformers, peft and mlflow are installed; tuneforge need not be.

A version's files (`tuneforge_layout` 1), under the MLflow model's `artifacts/`:
    checkpoint/            the tuned checkpoint (config.json, safetensors, tokenizer) or a PEFT
                           adapter (adapter_config.json, adapter_model.safetensors, tokenizer)
    base/                  an adapter's base, bundled only when it has no lasting address
    tuneforge_model.json   {"tuneforge_layout": 1, "adapter": bool, "base": ..., "dtype": ...}
An adapter's `base` is an address that outlives the worker that trained it: a registry version
pinned by number (`models:/NAME/3`, resolved through the registry the loading process uses), a
hub id at a commit (`hf://Org/Name@<sha>`, through the Hugging Face cache or hub; works with
`HF_HUB_OFFLINE=1` when cached), or `bundled` (the base's files are in `base/`). At load time
the adapter is applied to its base and merged into it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:
    from tuneforge.prompts import instruction_prompt, render_prompt, split_turns, stop_token_ids
except ModuleNotFoundError:  # loaded without tuneforge installed: the copy logged with the model
    from tuneforge_prompts import (  # type: ignore[no-redef]
        instruction_prompt,
        render_prompt,
        split_turns,
        stop_token_ids,
    )

LAYOUT = 1
MANIFEST = "tuneforge_model.json"
CHECKPOINT = "checkpoint"
BUNDLED_BASE = "base"
HUB_PREFIX = "hf://"
# Files a checkpoint needs; anything else (pickled *.bin weights, code) is never fetched.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
_ROLES = {"system", "user", "assistant"}


class ModelLoadError(ValueError):
    """A registered model cannot be loaded; the message is one line naming what is missing."""


class BadInput(ValueError):
    """An input the model cannot answer; the message is one line naming it (served: HTTP 400
    with this message)."""


def hub_reference(repo_id: str, revision: str) -> str:
    """The lasting address of a hub checkpoint at a commit: `hf://Org/Name@<sha>`."""
    return f"{HUB_PREFIX}{repo_id}@{revision}"


def hub_snapshot(repo_id: str, revision: str | None, trust_remote_code: bool) -> Path:
    """The local snapshot of a hub checkpoint (from the Hugging Face cache, or fetched):
    checkpoint files only, code too when trusted. One line naming the id and the cache when it
    cannot be had (offline and not cached, unknown repo, auth)."""
    from huggingface_hub import constants, snapshot_download

    patterns = [*HUB_PATTERNS, "*.py"] if trust_remote_code else HUB_PATTERNS
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = "; HF_HUB_OFFLINE=1: cache only" if constants.HF_HUB_OFFLINE else ""
        raise ModelLoadError(
            f"{repo_id}: cannot fetch from the hub (cache {constants.HF_HUB_CACHE}{offline}): "
            f"{first}"
        ) from None


def find_checkpoint_dir(root: Path) -> Path:
    """The directory under `root` holding a Hugging Face `config.json` with weights."""
    for config in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        if any(config.parent.glob("*.safetensors")):
            return config.parent
    raise ModelLoadError(f"{root}: no safetensors checkpoint found")


def read_manifest(model_root: Path) -> dict[str, Any] | None:
    """The tuneforge manifest of a downloaded MLflow model directory, or None (a version
    registered before `tuneforge_layout` 1, in MLflow's transformers flavour)."""
    path = model_root / "artifacts" / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def download(uri: str, dst: Path) -> Path:
    """Downloads an MLflow model (`models:/...`, `runs:/...`) into `dst`; returns its root."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        raise ModelLoadError(f"{uri}: {exc.message.splitlines()[0]}") from None


def materialize(source: str | Path, dst: Path) -> Path:
    """One local checkpoint directory (weights, config and tokenizer, loadable by any
    `from_pretrained`) for a registered model: a URI, or a downloaded model's root. An
    adapter is merged onto its base here, so the result trains or evaluates like any base."""
    root = download(source, dst / "download") if isinstance(source, str) else source
    manifest = read_manifest(root)
    if manifest is None:
        return _transformers_flavour_checkpoint(root)
    checkpoint = root / "artifacts" / CHECKPOINT
    if not manifest["adapter"]:
        return checkpoint
    model, tokenizer = load_registered(root, dst / "base")
    merged = dst / "merged"
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    return merged


def _transformers_flavour_checkpoint(root: Path) -> Path:
    """Versions logged before layout 1 keep the weights under `model/` and the tokenizer under
    `components/tokenizer/`; the tokenizer is copied beside the weights."""
    checkpoint = find_checkpoint_dir(root)
    tokenizer_dir = root / "components" / "tokenizer"
    if tokenizer_dir.is_dir():
        for file in tokenizer_dir.iterdir():
            if not (checkpoint / file.name).exists():
                shutil.copy2(file, checkpoint / file.name)
    return checkpoint


def resolve_base(reference: str, model_root: Path, scratch: Path, trust_remote_code: bool) -> Path:
    """A local checkpoint directory for an adapter's recorded base (see the module docstring)."""
    if reference == "bundled":
        return model_root / "artifacts" / BUNDLED_BASE
    if reference.startswith("models:/"):
        return materialize(reference, scratch)
    if reference.startswith(HUB_PREFIX):
        repo_id, _, revision = reference.removeprefix(HUB_PREFIX).partition("@")
        return hub_snapshot(repo_id, revision or None, trust_remote_code)
    raise ModelLoadError(f"{model_root}: unknown adapter base {reference!r} in {MANIFEST}")


def load_registered(model_root: Path, scratch: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a downloaded layout-1 model, an adapter merged onto its base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(model_root)
    if manifest is None:
        raise ModelLoadError(f"{model_root}: no {MANIFEST}: not a tuneforge layout-1 model")
    trust = bool(manifest.get("trust_remote_code", False))
    dtype = manifest.get("dtype", "float32")  # model.dtype; auto: the checkpoint's own
    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype), "use_safetensors": True}
    checkpoint = model_root / "artifacts" / CHECKPOINT
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not manifest["adapter"]:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=trust, **kwargs)
        return model, tokenizer
    from peft import PeftModel

    base_dir = resolve_base(manifest["base"], model_root, scratch, trust)
    base = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=trust, **kwargs)
    return PeftModel.from_pretrained(base, checkpoint).merge_and_unload(), tokenizer


def conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """The prompt turns of each input: a string is one user turn; a dict is an Alpaca record
    (`instruction`, optional `input`), a `prompt`, or chat `messages` ending with a user turn.
    Accepts one input, a list of them, or a pandas DataFrame with those columns, in whichever
    form MLflow's scoring server hands them over (`inputs` arrive as numpy arrays: one per
    string field, an array of turns for `messages`), so every request form gets one answer."""
    model_input = _plain(model_input)
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # DataFrame
        columns = list(model_input.columns)
        if len(columns) == 1 and columns[0] not in ("instruction", "prompt", "messages"):
            items: Iterable[Any] = model_input[columns[0]].tolist()  # a column of prompts
        else:
            items = model_input.to_dict("records")
    elif isinstance(model_input, str | dict):
        items = [model_input]
    else:
        items = list(model_input)
    return [_turns(i, _plain(item)) for i, item in enumerate(items)]


def _plain(value: Any) -> Any:
    """Numpy arrays and scalars (what MLflow's scoring server makes of JSON `inputs`) as
    plain Python values, inside dicts too; anything else as it is."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not hasattr(value, "columns"):  # not a DataFrame
        value = value.tolist()
        if isinstance(value, list):
            return [_plain(v) for v in value]
    return value


def _turns(i: int, item: Any) -> list[dict[str, str]]:
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    if not isinstance(item, dict):
        raise BadInput(f"input {i}: expected a string or a dict, got {type(item).__name__}")
    keys = set(item)
    if keys == {"messages"}:
        messages = item["messages"]
        if isinstance(messages, str):
            messages = json.loads(messages)
        if not messages or not all(
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise BadInput(
                f"input {i}: messages must be a non-empty list of "
                "{role: system|user|assistant, content: str}"
            )
        if messages[-1]["role"] != "user":
            raise BadInput(f"input {i}: the last message must be the user's (the question)")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "instruction" in keys and keys <= {"instruction", "input"}:
        content = instruction_prompt(str(item["instruction"]), item.get("input"))
        return [{"role": "user", "content": content}]
    if keys == {"prompt"}:
        return [{"role": "user", "content": str(item["prompt"])}]
    raise BadInput(
        f"input {i}: a dict needs 'instruction' (and optionally 'input'), 'prompt' or "
        f"'messages'; got keys {sorted(keys)}"
    )


def generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy answers to rendered prompts, decoded without special tokens; generation stops at
    the tokenizer's end token (a chat template's end of turn where it sets one)."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generate at the right edge
    answers: list[str] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start : start + batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = enc.to(model.device)
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stop_token_ids(tokenizer),
                )
                new_tokens = out[:, enc["input_ids"].shape[1] :]
                answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers


def generate_answers(
    model: Any, tokenizer: Any, records: list[dict], max_new_tokens: int, bs: int
) -> list[str]:
    """Greedy answers to validated records' prompts (the turns before each answer), exactly as
    a registered version answers them: what evaluation and periodic evaluation score."""
    prompts = [render_prompt(split_turns(r)[0], tokenizer) for r in records]
    return generate(model, tokenizer, prompts, max_new_tokens, bs)


class TuneforgeModel:
    """The pyfunc model: loads the checkpoint (an adapter merged onto its base) once, then
    answers prompts greedily."""

    def load_context(self, context: Any) -> None:
        import torch

        root = Path(context.artifacts[CHECKPOINT]).parent.parent
        manifest = read_manifest(root) or {}
        self._scratch = tempfile.mkdtemp(prefix="tuneforge-base-")
        self.model, self.tokenizer = load_registered(root, Path(self._scratch))
        self.model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.max_new_tokens = int(manifest.get("max_new_tokens", 64))

    def predict(self, context, model_input, params: dict | None = None) -> list[str]:
        params = params or {}
        prompts = [render_prompt(t, self.tokenizer) for t in conversations(model_input)]
        max_new = int(params.get("max_new_tokens", self.max_new_tokens))
        batch_size = int(params.get("batch_size", 16))
        return generate(self.model, self.tokenizer, prompts, max_new, batch_size)


# Not imported as tuneforge's module: executed by MLflow as a registered model's code. (This
# file names no tuneforge constant: it loads where tuneforge is not installed.)
if __name__.partition(".")[0] != "tuneforge":
    import warnings

    import mlflow.models
    import mlflow.pyfunc

    # Mixed in here, not above: tuneforge imports this module for its helpers without paying
    # for mlflow.pyfunc (2 s). `model_input` has no type hint: MLflow would validate inputs
    # against it, and one schema cannot take strings, records and chat turns alike
    # (`conversations` checks them instead, with errors naming the input); MLflow warns about
    # the missing hint when the class is made, which says nothing to whoever serves it.
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class _Refused(MlflowException, ValueError):
        """An input the model cannot answer: a ValueError to whoever calls `predict`, and the
        scoring server's HTTP 400, whose message is the one-line reason alone. (The server
        rewrites an error's message to begin with the whole request, a DataFrame's spread over
        lines; this message keeps what it was.)"""

        def __init__(self, reason: str) -> None:
            self._reason = reason
            super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

        @property
        def message(self) -> str:
            return self._reason

        @message.setter
        def message(self, value: str) -> None:
            pass  # see the class docstring

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)

        class _PyfuncModel(TuneforgeModel, mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params: dict | None = None) -> list[str]:
                """TuneforgeModel.predict; an input it cannot answer is refused (`_Refused`)."""
                try:
                    return super().predict(context, model_input, params)
                except BadInput as exc:
                    raise _Refused(str(exc)) from None

    mlflow.models.set_model(_PyfuncModel())
