"""Training in processes of its own: torchrun's ranks on this node (DDP/FSDP, node 0 of a
multi-node run), or one plain process beside others (a sweep's candidates). Each process runs
`worker.py` on a spec file; the result, step metrics and any ValueError come back as files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tuneforge.config import TrainConfig
from tuneforge.jsonl import JsonlRecords, read_jsonl
from tuneforge.training import multinode
from tuneforge.training.loop import MetricsCallback, TrainResult, train_model


def train_from_files(
    base_dir: str | Path,
    train_path: str,
    eval_path: str,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    isolated: bool = False,
    on_metrics: MetricsCallback | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    checkpoint_dir: str | Path | None = None,
    token_cache_dir: str | Path | None = None,
) -> TrainResult:
    """Trains on the split's files in this process, or in processes of its own when
    `cfg.world_size` > 1 or `isolated` (torch's threads and RNG are per process: a sweep
    trains candidates side by side). The eval file is read only for periodic evaluation."""
    common = {
        "on_metrics": on_metrics,
        "trust_remote_code": trust_remote_code,
        "dtype": dtype,
        "checkpoint_dir": checkpoint_dir,
        "token_cache_dir": token_cache_dir,
    }
    if cfg.world_size > 1 or isolated:
        return train_in_processes(base_dir, train_path, cfg, out_dir, eval_path=eval_path, **common)
    eval_records = read_jsonl(eval_path) if cfg.eval_every else None
    records = JsonlRecords(train_path)  # read a batch at a time, never all held
    return train_model(base_dir, records, cfg, out_dir, eval_records=eval_records, **common)


def train_in_processes(
    base_dir: str | Path,
    train_path: str,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    on_metrics: MetricsCallback | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    eval_path: str | None = None,
    checkpoint_dir: str | Path | None = None,
    token_cache_dir: str | Path | None = None,
) -> TrainResult:
    """Runs `train_model` in processes of its own and returns rank 0's result; its step
    metrics reach `on_metrics` once the processes have finished.

    `cfg.world_size` > 1: torchrun on this node (node 0 of a multi-node run, see
    `multinode.py`); else one plain process, which keeps torch's process-wide state
    (threads, RNG) to itself: how a sweep trains candidates side by side. A ValueError in
    training (bad data or config) is raised here as one, so it is not retried."""
    with tempfile.TemporaryDirectory(prefix="tuneforge-train-") as tmp:
        spec = {
            "base_dir": str(base_dir),
            "train_path": str(train_path),
            "eval_path": eval_path if cfg.eval_every else None,
            "cfg": cfg.model_dump(mode="json"),
            "out_dir": str(out_dir),
            "trust_remote_code": trust_remote_code,
            "dtype": dtype,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
            "token_cache_dir": str(token_cache_dir) if token_cache_dir else None,
            "metrics_path": f"{tmp}/metrics.jsonl",
            "result_path": f"{tmp}/result.json",
            "error_path": f"{tmp}/error.json",
        }
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ)
        if cfg.world_size > 1:
            rendezvous = None
            if cfg.num_nodes > 1:
                rendezvous = multinode.node_zero_rendezvous(
                    cfg.num_nodes, cfg.num_processes, cfg.rendezvous
                )
            command = multinode.launcher_command(
                num_nodes=cfg.num_nodes,
                procs_per_node=cfg.num_processes,
                rendezvous=rendezvous,
                spec_path=f"{tmp}/spec.json",
            )
        else:
            command = [sys.executable, "-m", multinode.TRAIN_MODULE, f"{tmp}/spec.json"]
            env[multinode.PARENT_PID] = str(os.getpid())  # it ends when this process does
            if cfg.num_threads:  # size OpenMP's pool from the start, not only torch's
                env["OMP_NUM_THREADS"] = str(cfg.num_threads)
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if Path(spec["error_path"]).exists():
            raise ValueError(json.loads(Path(spec["error_path"]).read_text())["error"])
        if done.returncode:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"training process failed ({done.returncode}):\n{tail}")
        if on_metrics:
            for line in Path(spec["metrics_path"]).read_text().splitlines():
                entry = json.loads(line)
                on_metrics(entry["step"], entry["values"])
        data = json.loads(Path(spec["result_path"]).read_text())
    return TrainResult.from_dict(data)
