"""One training process, started by `train_in_processes` (`launch.py`):

    python -m tuneforge.training.worker SPEC.json      # alone (a sweep's candidate)
    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m tuneforge.training.worker SPEC.json         # a rank of one node's DDP/FSDP

SPEC.json holds the arguments of `train_model` (paths, the train config). Under torchrun every
rank trains its shard of each batch (gloo on CPUs, NCCL on GPUs). The processes of a joining
node (`multinode.py`) start without a spec and receive node 0's over the process group.
At the end rank 0's step metrics and result reach the process that holds the spec, which
writes them (JSONL, JSON) where the spec says, for the launching task to log. A ValueError
(bad data or config) is written there too, so the task can fail it in one line, unretried.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch.distributed as dist

from tuneforge.config import TrainConfig
from tuneforge.jsonl import JsonlRecords, read_jsonl
from tuneforge.training.loop import train_model
from tuneforge.training.multinode import PARENT_PID


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text()) if argv else None
    if "WORLD_SIZE" not in os.environ:  # alone, not started by torchrun
        if spec is None:
            raise SystemExit(f"usage: python -m {__spec__.name} SPEC.json")
        _end_with_parent()
        metrics, result = _train(spec, errors_to=spec)
        _write_report(spec, metrics, asdict(result))
        return
    import torch

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        # Spec and results travel as Python objects: a gloo group does that on any device.
        objects = dist.new_group(backend="gloo")
        holder, shared = _spec_from_node_zero(spec, objects)
        metrics, result = _train(shared, errors_to=spec)
        box = [(metrics, asdict(result)) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0, group=objects)
        if dist.get_rank() == holder:
            _write_report(shared, *box[0])
    finally:
        dist.destroy_process_group()


def _end_with_parent() -> None:
    """Linux: this process gets SIGTERM when the one that started it dies, even by SIGKILL, so
    a killed flow (a sweep's candidate) leaves nothing training on, writing into checkpoints
    that its re-run resumes from."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(os.environ.get(PARENT_PID, os.getppid())):  # it died before that
        raise SystemExit("the process that started this training has ended")


def _spec_from_node_zero(spec: dict[str, Any] | None, group: Any) -> tuple[int, dict[str, Any]]:
    """The spec every rank trains on, and the rank it came from (the lowest one given it:
    torch numbers the nodes in its own order, so node 0's processes need not be ranks 0..)."""
    given: list[bool | None] = [None] * dist.get_world_size()
    dist.all_gather_object(given, spec is not None, group=group)
    if True not in given:
        raise SystemExit("no process of this run was given a spec (node 0 launches with one)")
    holder = given.index(True)
    box = [spec]
    dist.broadcast_object_list(box, src=holder, group=group)
    return holder, box[0]


def _train(
    spec: dict[str, Any], errors_to: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], Any]:
    """Trains as the spec says; returns rank 0's step metrics and the result. A ValueError is
    also written to `errors_to`'s error path (the process holding the spec)."""
    metrics: list[dict[str, Any]] = []

    def on_metrics(step: int, values: dict[str, float]) -> None:  # called on rank 0 only
        metrics.append({"step": step, "values": values})

    try:
        result = train_model(
            spec["base_dir"],
            JsonlRecords(spec["train_path"]),
            TrainConfig.model_validate(spec["cfg"]),
            spec["out_dir"],
            on_metrics=on_metrics,
            trust_remote_code=spec["trust_remote_code"],
            dtype=spec.get("dtype", "float32"),
            eval_records=read_jsonl(spec["eval_path"]) if spec.get("eval_path") else None,
            checkpoint_dir=spec.get("checkpoint_dir"),
            token_cache_dir=spec.get("token_cache_dir"),
        )
    except ValueError as exc:
        if errors_to is not None:
            Path(errors_to["error_path"]).write_text(json.dumps({"error": str(exc)}))
        raise
    return metrics, result


def _write_report(
    spec: dict[str, Any], metrics: list[dict[str, Any]], result: dict[str, Any]
) -> None:
    Path(spec["metrics_path"]).write_text("".join(json.dumps(m) + "\n" for m in metrics))
    Path(spec["result_path"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
