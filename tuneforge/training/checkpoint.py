"""Crash-safe training checkpoints: written atomically, resumed only when they match.

A checkpoint is a directory `step-000200/` under the checkpoint root holding everything the
training loop needs to continue as if it had never stopped:

    weights.safetensors    the trainable parameters (frozen ones come back from the base)
    optimizer.safetensors  the optimizer's per-parameter tensors (AdamW moments and step)
    best.safetensors       the best step's weights so far (periodic evaluation), if any
    rng.safetensors        the torch RNG states (dropout draws continue where they stopped)
    state.json             step, counters, scheduler, optimizer hyperparameters, resume key

It is written into a hidden temporary directory, every file flushed to disk, and renamed into
place last: a crash or a full disk mid-write leaves a temporary directory (cleared on the next
start), never a half checkpoint that looks complete. Tensors go through safetensors only, so
loading a checkpoint never unpickles anything.

The resume key records what the checkpoint was trained on (data, base weights, training
settings). Resuming with different ones would silently skip or repeat data, so it is refused
with a message that names what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tuneforge.config import TrainConfig

_STEP_DIR = re.compile(r"^step-(\d{9})$")
_TMP_PREFIX = ".tmp-"


class CheckpointMismatchError(ValueError):
    """A checkpoint exists but was written for other data, base weights or settings."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, unwritable directory)."""


@dataclass(frozen=True)
class ResumeKey:
    """What a checkpoint was trained on; resuming needs all three to be equal."""

    data: str  # hash of the training records
    base: str  # fingerprint of the base model's weights and config
    train: str  # hash of the training settings that shape the weights (strategy included)

    @classmethod
    def of(cls, data: str, base_dir: str | Path, cfg: TrainConfig) -> ResumeKey:
        """The key of a run on records whose `records_digest` is `data`."""
        settings = cfg.shaping_settings()
        return cls(
            data=data,
            base=fingerprint_model_dir(Path(base_dir)),
            train=_sha(json.dumps(settings, sort_keys=True).encode()),
        )

    def differences(self, other: ResumeKey) -> list[str]:
        names = {"data": "training data", "base": "base model", "train": "training settings"}
        return [names[k] for k, v in asdict(self).items() if asdict(other)[k] != v]


@dataclass
class LoopState:
    """The loop's counters, saved with each checkpoint."""

    step: int = 0
    real_tokens: int = 0
    trained_tokens: int = 0
    loss: float = float("nan")
    best_step: int = 0
    best_score: float = -1.0
    best_loss: float = float("inf")
    seconds: float = 0.0  # training time so far, over every attempt


def records_digest(records: Iterable[dict[str, Any]]) -> str:
    """A hash of training records' content: what a checkpoint and the token cache were made
    from. The hash of `json.dumps(list(records), sort_keys=True)`, fed a record at a time so
    a file's records are never all held: a list and a file of the same records hash alike,
    and as every earlier version hashed them (a run checkpointed before an upgrade resumes
    after it). Not orjson: its bytes differ, and it writes NaN as null."""
    encoder = json.JSONEncoder(sort_keys=True)  # json.dumps(..., sort_keys=True), made once
    digest = hashlib.sha256(b"[")
    unread, first = iter(records), True
    while batch := list(islice(unread, 10_000)):  # a batch's list is the whole's, less [ and ]
        digest.update((b"" if first else b", ") + encoder.encode(batch)[1:-1].encode())
        first = False
    digest.update(b"]")
    return digest.hexdigest()[:16]


def fingerprint_model_dir(model_dir: Path) -> str:
    """A cheap fingerprint of a checkpoint directory: config files whole, and for each weights
    file its size plus its first and last MiB (hashing many GB whole would take minutes)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        digest.update(str(path.relative_to(model_dir)).encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
        elif path.suffix == ".safetensors":
            size = path.stat().st_size
            with path.open("rb") as f:
                digest.update(str(size).encode() + f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                digest.update(f.read())
    return digest.hexdigest()[:16]


def clear_checkpoints(root: Path) -> None:
    """Deletes every checkpoint once training has finished and its result is saved."""
    if root.is_dir():
        for path in [*complete_checkpoints(root), *root.glob(f"{_TMP_PREFIX}*")]:
            shutil.rmtree(path, ignore_errors=True)


def find_resumable(root: Path, key: ResumeKey, resume: str) -> Path | None:
    """The newest complete checkpoint under `root` to resume from, or None to start fresh.

    Clears temporary directories left by a crash mid-write. With `resume="never"` deletes every
    checkpoint. Raises `CheckpointMismatchError` for a checkpoint of other data or settings.
    """
    if not root.exists():
        return None
    for leftover in root.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    checkpoints = complete_checkpoints(root)
    if resume == "never":
        for path in checkpoints:
            shutil.rmtree(path)
        return None
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    saved = ResumeKey(**json.loads((latest / "state.json").read_text())["key"])
    changed = saved.differences(key)
    if changed:
        raise CheckpointMismatchError(
            f"checkpoint {latest} was written for a different {' and '.join(changed)}; "
            "resuming would skip or repeat data. Set train.resume=never to delete it and start "
            "over, or restore the original inputs to resume"
        )
    return latest


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints under `root`, oldest first (none if it does not exist)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(
    root: Path,
    key: ResumeKey,
    progress: LoopState,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    best_weights: dict[str, torch.Tensor],
    keep: int,
) -> Path:
    """Writes a checkpoint atomically, then deletes all but the newest `keep`."""
    final = root / f"step-{progress.step:09d}"
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_tensors(tmp / "weights.safetensors", trainable_weights(model))
        optimizer_tensors, optimizer_meta = _split_optimizer_state(optimizer.state_dict())
        _write_tensors(tmp / "optimizer.safetensors", optimizer_tensors)
        if best_weights:
            _write_tensors(tmp / "best.safetensors", best_weights)
        _write_tensors(tmp / "rng.safetensors", _rng_states())
        state = {
            "key": asdict(key),
            "progress": asdict(progress),
            "optimizer": optimizer_meta,
            "scheduler": scheduler.state_dict(),
        }
        _write_bytes(tmp / "state.json", json.dumps(state).encode())  # last: marks it complete
        if final.exists():  # the same step written before a crash: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in complete_checkpoints(root)] if root.is_dir() else []
        kept = f"the newest complete one is still {previous[-1]}" if previous else "none exists"
        raise CheckpointWriteError(
            f"cannot write checkpoint {final}: {exc.strerror or exc}; {kept}"
        ) from exc
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[LoopState, dict[str, torch.Tensor]]:
    """Restores weights, optimizer, scheduler and RNG from `path`; returns the counters and
    the best step's weights (empty without periodic evaluation)."""
    state = json.loads((path / "state.json").read_text())
    weights = load_file(path / "weights.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(
        _join_optimizer_state(load_file(path / "optimizer.safetensors"), state["optimizer"])
    )
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_states(load_file(path / "rng.safetensors"))
    best = path / "best.safetensors"
    return LoopState(**state["progress"]), load_file(best) if best.exists() else {}


def trainable_weights(model: Any) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (for safetensors) plus the JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in tensors.items():
        index, name = flat.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return states


def _set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[f"cuda{i}"] for i in range(len(states) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:  # the Rust writer's I/O errors (disk full, file too large)
        raise OSError(f"{path.name}: {exc}") from exc
    _fsync(path)


def write_json_atomically(path: Path, data: Any) -> None:
    """Writes `data` as JSON to `path` so that a crash leaves the old file or the new one,
    never half of one."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}")
    _write_bytes(tmp, json.dumps(data).encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_bytes(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Makes a rename inside `path` durable (the directory entry itself is flushed)."""
    _fsync(path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
