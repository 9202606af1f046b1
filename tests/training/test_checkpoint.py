"""Crash-safe training: a killed process resumes from its last checkpoint and ends where an
uninterrupted run ends; a full disk never leaves a broken checkpoint as the newest; a
checkpoint of other data is refused; Prefect retries resume."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from prefect import flow, task
from safetensors.torch import load_file

from tests.conftest import REPO
from tuneforge.config import TrainConfig
from tuneforge.run_context import RunContext
from tuneforge.tasks.train import retry_unless_bad_input, train_with_strategy
from tuneforge.training.checkpoint import CheckpointMismatchError, complete_checkpoints
from tuneforge.training.loop import train_model

SETTINGS = {"steps": 150, "batch_size": 8, "warmup_steps": 10, "log_every": 1, "max_length": 64}
# Dropout makes resuming exact only if the RNG state is restored too: so train LoRA with it.
LORA = {**SETTINGS, "strategy": "lora", "settings": {"dropout": 0.1}, "checkpoint_every": 25}

TRAIN_SCRIPT = """
import json, sys
from tuneforge.jsonl import read_jsonl
from tuneforge.training.loop import train_model
from tuneforge.config import TrainConfig

base, data, cfg, out, ckpt, losses = sys.argv[1:]
with open(losses, "a", buffering=1) as f:  # line by line: a kill loses nothing
    def log(step, m):
        if "train.loss" in m:
            f.write(json.dumps([step, m["train.loss"]]) + "\\n")

    cfg = TrainConfig.model_validate_json(cfg)
    train_model(base, read_jsonl(data), cfg, out, on_metrics=log, checkpoint_dir=ckpt or None)
"""


def _start(args: list[str], file_size_limit: int | None = None) -> subprocess.Popen:
    def limit() -> None:  # a real "disk full" for this process: writes past the limit fail
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit if file_size_limit else None,
    )


def _losses(path: Path) -> dict[int, float]:
    return {step: loss for step, loss in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, bundled_records, tmp_path_factory):
    """An uninterrupted run: its step losses and final adapter weights. Trained by the same
    script in a fresh process, as the interrupted runs are: the pytest process's thread count
    (which earlier tests may have set) would change float rounding, not what is tested."""
    out = tmp_path_factory.mktemp("reference")
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bundled_records[:200]))
    cfg = TrainConfig(**LORA).model_dump_json()
    args = [str(tiny_model_dir), str(data), cfg, str(out / "model"), "", str(out / "losses")]
    _, stderr = _start(args).communicate(timeout=180)
    assert (out / "model").exists(), stderr
    return _losses(out / "losses"), load_file(out / "model" / "adapter_model.safetensors")


def test_killed_then_disk_full_then_resumed_run_ends_like_an_uninterrupted_one(
    reference, tiny_model_dir, bundled_records, tmp_path
):
    ref_losses, ref_weights = reference
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bundled_records[:200]))
    ckpt, losses = tmp_path / "checkpoints", tmp_path / "losses.jsonl"
    args = [
        str(tiny_model_dir),
        str(data),
        TrainConfig(**LORA).model_dump_json(),
        str(tmp_path / "model"),
        str(ckpt),
        str(losses),
    ]

    # 1. SIGKILL once the second checkpoint exists, mid-way through the run.
    proc = _start(args)
    deadline = time.monotonic() + 120
    while not (ckpt / "step-000000050" / "state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "model").exists()  # it really died before finishing
    killed_at = max(_losses(losses))
    assert killed_at < SETTINGS["steps"]
    # A crash mid-write leaves a temporary directory: it must never count as a checkpoint.
    (ckpt / ".tmp-step-000000999-1").mkdir()
    (ckpt / ".tmp-step-000000999-1" / "weights.safetensors").write_bytes(b"half a file")
    newest = complete_checkpoints(ckpt)[-1]

    # 2. Resume with a full disk (files capped below the optimizer state's size): the next
    # checkpoint write fails with a clear error and the newest complete one is untouched.
    proc = _start(args, file_size_limit=24_000)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    last_line = stderr.strip().splitlines()[-1]
    assert "cannot write checkpoint" in last_line and "File too large" in last_line, stderr
    assert f"the newest complete one is still {newest.name}" in last_line
    assert complete_checkpoints(ckpt)[-1] == newest
    assert not list(ckpt.glob(".tmp-*")) and not (tmp_path / "model").exists()

    # 3. Resume with room to write: same losses from the checkpoint on, same final weights.
    proc = _start(args)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    resumed = _losses(losses)
    assert sorted(resumed) == sorted(ref_losses)  # every step logged; later attempts overwrite
    for step in range(int(newest.name.split("-")[1]) + 1, SETTINGS["steps"] + 1):
        assert resumed[step] == ref_losses[step], step
    weights = load_file(tmp_path / "model" / "adapter_model.safetensors")
    assert weights.keys() == ref_weights.keys()
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key
    assert not complete_checkpoints(ckpt)  # cleared once the result was saved


class Crash(RuntimeError):
    pass


def _crash_at(step: int):
    def on_metrics(at: int, values: dict) -> None:
        if at == step:
            raise Crash("simulated crash")

    return on_metrics


def test_a_checkpoint_of_other_data_is_refused_unless_told_to_start_over(
    tiny_model_dir, bundled_records, tmp_path
):
    cfg = TrainConfig(**{**SETTINGS, "steps": 12, "checkpoint_every": 5})
    ckpt = tmp_path / "checkpoints"
    with pytest.raises(Crash):
        train_model(
            tiny_model_dir,
            bundled_records[:64],
            cfg,
            tmp_path / "a",
            on_metrics=_crash_at(8),
            checkpoint_dir=ckpt,
        )
    assert [p.name for p in complete_checkpoints(ckpt)] == ["step-000000005"]

    with pytest.raises(CheckpointMismatchError, match=r"different training data; .*resume=never"):
        train_model(
            tiny_model_dir, bundled_records[64:128], cfg, tmp_path / "b", checkpoint_dir=ckpt
        )
    changed = cfg.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(CheckpointMismatchError, match="different training settings"):
        train_model(
            tiny_model_dir, bundled_records[:64], changed, tmp_path / "c", checkpoint_dir=ckpt
        )

    fresh = cfg.model_copy(update={"resume": "never"})
    result = train_model(
        tiny_model_dir, bundled_records[64:128], fresh, tmp_path / "d", checkpoint_dir=ckpt
    )
    assert result.resumed_from_step == 0 and not complete_checkpoints(ckpt)


def test_a_prefect_retry_of_the_train_task_resumes(
    tiny_model_dir, bundled_records, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from tuneforge.tracking import MetricLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("retry")).info.run_id
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bundled_records[:64]))
    cfg = TrainConfig(**{**SETTINGS, "steps": 20, "checkpoint_every": 5})

    calls = {"crashed": False}
    log = MetricLogger.log

    def flaky_log(self, values, step):  # the worker dies once, at step 12
        if step == 12 and not calls["crashed"]:
            calls["crashed"] = True
            raise ConnectionResetError("worker lost")
        log(self, values, step)

    monkeypatch.setattr(MetricLogger, "log", flaky_log)

    @flow
    def run() -> object:
        return train_with_strategy.with_options(retries=1)(
            base_dir=str(tiny_model_dir),
            train_path=str(data),
            eval_path=str(data),  # unread: no periodic evaluation
            train=cfg,
            checkpoint_dir=str(tmp_path / "checkpoints"),
            ctx=RunContext(run_id=run_id, tracking_uri=uri, run_dir=str(tmp_path / "run")),
        )

    result = run()
    assert calls["crashed"] and result.resumed_from_step == 10 and result.steps == 20
    reference = train_model(tiny_model_dir, bundled_records[:64], cfg, tmp_path / "ref")
    assert result.final_loss == reference.final_loss
    metrics = client.get_metric_history(run_id, "train.resumed_from_step")
    assert [m.value for m in metrics] == [10.0]


def test_bad_input_is_not_retried_but_a_crash_is():
    attempts: list[str] = []

    @task(retries=2, retry_condition_fn=retry_unless_bad_input)
    def fails(error: type[Exception]) -> None:
        attempts.append(error.__name__)
        raise error("boom")

    @flow
    def run(error: type[Exception]) -> None:
        fails(error)

    for error in (ValueError, OSError):
        with pytest.raises(error):
            run(error)
    assert attempts == ["ValueError", "OSError", "OSError", "OSError"]
