"""One rank of a distributed training run; `train_with_strategy` launches it through torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m tuneforge.tasks.distributed_train SPEC.json

SPEC.json holds the arguments of `train_model` (paths, the train config). Every rank trains its
shard of each batch under DDP (gloo on CPUs, NCCL on GPUs); rank 0 writes the step metrics
(JSONL) and the result (JSON) where the spec says, for the launching task to log.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from tuneforge.config import TrainConfig
from tuneforge.jsonl import read_jsonl
from tuneforge.tasks.train import train_model


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        metrics_path = Path(spec["metrics_path"])

        def on_metrics(step: int, values: dict[str, float]) -> None:  # called on rank 0 only
            with metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, "values": values}) + "\n")

        result = train_model(
            spec["base_dir"],
            read_jsonl(spec["train_path"]),
            TrainConfig.model_validate(spec["cfg"]),
            spec["out_dir"],
            on_metrics=on_metrics,
            trust_remote_code=spec["trust_remote_code"],
            dtype=spec.get("dtype", "float32"),
            eval_records=read_jsonl(spec["eval_path"]) if spec.get("eval_path") else None,
            checkpoint_dir=spec.get("checkpoint_dir"),
        )
        if dist.get_rank() == 0:
            Path(spec["result_path"]).write_text(json.dumps(asdict(result)))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
