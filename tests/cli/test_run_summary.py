"""The JSON line `tuneforge run --json` ends with, built from a real `RetrainResult` (the flow
itself runs in the integration tests, tests/flows)."""

from __future__ import annotations

import json

from tuneforge.batching import MaskAudit
from tuneforge.cli.jobs import run_summary, skipped_run_summary
from tuneforge.data.validation import ValidationReport
from tuneforge.flows.retrain import RetrainResult, SkippedRun
from tuneforge.run_context import RunContext
from tuneforge.tasks.register import Registration
from tuneforge.tasks.split_data import SplitPaths
from tuneforge.training.loop import TrainResult

REGISTRATION = Registration(
    name="demo",
    version="3",
    alias="champion",
    reason="exact_match 0.5 beats the champion's 0.4",
    model_uri="models:/demo/3",
)
DATA = ValidationReport(
    total=100,
    valid=98,
    rejected=2,
    valid_path="runs/abc/data/valid.jsonl",
    quarantine_path="runs/abc/data/quarantine.jsonl",
    fingerprint="f" * 64,
    schema="dolly",
)
TRAINING = TrainResult(
    model_dir="runs/abc/tuned",
    steps=50,
    examples=78,
    real_tokens=20_000,
    trained_tokens=9_000,
    seconds=8.0,
    final_loss=1.25,
    best_step=40,
    trainable_parameters=1_234,
    total_parameters=5_678,
    audit=MaskAudit(examples=78, truncated=0, trained_tokens=900, masked_tokens=1_100),
)


def _result() -> RetrainResult:
    return RetrainResult(
        ctx=RunContext(run_id="abc", tracking_uri="sqlite:///mlflow.db", run_dir="runs/abc"),
        data=DATA,
        split=SplitPaths("runs/abc/train.jsonl", "runs/abc/eval.jsonl", 78, 20),
        training=TRAINING,
        base={"exact_match": 0.1, "eval_loss": 3.0, "examples": 20.0},
        tuned={"exact_match": 0.5, "eval_loss": 1.5, "examples": 20.0},
        registration=REGISTRATION,
    )


def test_a_registered_run_summarises_registration_data_training_and_metrics():
    summary = run_summary(_result())

    assert summary == {
        "model": "demo",
        "version": "3",
        "alias": "champion",
        "decision": "demo version 3 is champion: exact_match 0.5 beats the champion's 0.4",
        "reason": "exact_match 0.5 beats the champion's 0.4",
        "run_id": "abc",
        "tracking_uri": "sqlite:///mlflow.db",
        "data": {
            "total": 100,
            "valid": 98,
            "rejected": 2,
            "schema": "dolly",
            "quarantine": "runs/abc/data/quarantine.jsonl",
        },
        "training": {
            "steps": 50,
            "seconds": 8.0,
            "tokens_per_second": 2_500.0,
            "trainable_parameters": 1_234,
            "best_step": 40,
        },
        "metrics": {
            "base": {"exact_match": 0.1, "eval_loss": 3.0, "examples": 20.0},
            "tuned": {"exact_match": 0.5, "eval_loss": 1.5, "examples": 20.0},
        },
        "guards": [],  # none configured (the flow test of guards has them)
    }
    assert "\n" not in json.dumps(summary)  # one line


def test_a_skipped_run_says_why_and_which_version_it_equals():
    skipped = SkippedRun(
        run_id="def",
        tracking_uri="sqlite:///mlflow.db",
        reason="data and config unchanged since demo version 3",
        version="models:/demo/3",
    )

    assert skipped_run_summary(skipped) == {
        "skipped": "data and config unchanged since demo version 3",
        "version": "models:/demo/3",
        "run_id": "def",
    }
