"""Sweep files (tuneforge/sweeps.py) and the leaderboard's ranking (tuneforge/reporting.py):
every candidate's config is validated when the file loads, each problem one line naming the
file or the candidate; candidates may vary train.* only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import PRESET, REPO
from tuneforge.config import ConfigError, RegistryConfig
from tuneforge.flows.sweep_candidate import SweepInputs, as_candidate
from tuneforge.reporting import CandidateOutcome, leaderboard_rows, rank
from tuneforge.run_context import RunContext
from tuneforge.sweeps import load_sweep, sweep_fingerprint, threads_per_candidate
from tuneforge.tasks.train import checkpoint_dir


def _write(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "preset": str(PRESET), **spec}), "utf-8")
    return path


@pytest.mark.parametrize("path", sorted((REPO / "deployments" / "sweeps").glob("*.yaml")))
def test_every_shipped_sweep_loads_with_distinct_candidates(path: Path):
    spec = load_sweep(path)
    configs = spec.candidate_configs()
    assert len(configs) >= 2
    assert len({config.fingerprint() for _, config in configs}) == len(configs)
    base = spec.base_config()
    for _, config in configs:  # what the candidates share
        assert config.data == base.data and config.registry == base.registry
        assert config.model == base.model and config.evaluation == base.evaluation


def test_candidates_cross_the_grid_in_order_with_their_own_overrides(tmp_path):
    spec = load_sweep(
        _write(
            tmp_path,
            candidates=[
                {"name": "full", "set": ["train.strategy=full"]},
                {"name": "lora", "set": ["train.strategy=lora"]},
            ],
            grid={"train.learning_rate": [0.001, 0.01], "train.seed": [0]},
        )
    )
    names = [name for name, _ in spec.expanded()]
    assert names == [
        "full.learning_rate=0.001,seed=0",
        "full.learning_rate=0.01,seed=0",
        "lora.learning_rate=0.001,seed=0",
        "lora.learning_rate=0.01,seed=0",
    ]
    configs = dict(spec.candidate_configs())
    assert configs["lora.learning_rate=0.01,seed=0"].train.strategy == "lora"
    assert configs["lora.learning_rate=0.01,seed=0"].train.learning_rate == 0.01
    assert configs["full.learning_rate=0.001,seed=0"].train.learning_rate == 0.001


def test_a_grid_alone_names_candidates_by_their_values(tmp_path):
    spec = load_sweep(_write(tmp_path, grid={"train.steps": [10, 20]}))
    assert [name for name, _ in spec.expanded()] == ["steps=10", "steps=20"]
    assert [c.train.steps for _, c in spec.candidate_configs()] == [10, 20]


def test_the_sweeps_set_and_the_command_line_reach_every_candidate(tmp_path):
    spec = load_sweep(
        _write(tmp_path, set=["train.steps=7"], grid={"train.seed": [1, 2]}),
        ["train.batch_size=8"],
    )
    for _, config in spec.candidate_configs(["train.batch_size=8"]):
        assert (config.train.steps, config.train.batch_size) == (7, 8)


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        (
            {"candidates": [{"name": "a", "set": ["data.path=x.jsonl"]}]},
            "candidate a: data.path: a candidate may change train.* only",
        ),
        (
            {"grid": {"registry.metric": ["rouge_l"]}},
            "candidate metric=rouge_l: registry.metric: a candidate may change train.* only",
        ),
        (
            {"candidates": [{"name": "a", "set": ["train.stepz=3"]}]},
            "candidate a: ",  # then the preset's path and the key
        ),
        (
            {"candidates": [{"name": "a"}, {"name": "a"}]},
            "candidate names must be unique: a",
        ),
        ({"concurrency": 0}, "concurrency: Input should be greater than or equal to 1"),
        ({"candidates": [{"name": "../x"}]}, "candidates.0.name: String should match"),
        ({"grid": {"train.seed": []}}, "grid: train.seed: give at least one value"),
        (
            {"grid": {"train.max_length": [64, 96]}},
            "train.max_length differs between candidates (max_length=64 64, max_length=96 96)",
        ),
        ({"candidates_typo": []}, "candidates_typo: unknown key"),
    ],
)
def test_a_bad_sweep_fails_at_load_in_one_line_naming_the_file(tmp_path, spec, phrase):
    path = _write(tmp_path, **spec)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(info.value).startswith(f"{path}: ")
    assert phrase in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("train.stepz=3", "train.stepz: unknown key"),
        ("train.settings.rank=-1", "train.settings.rank"),
    ],
)
def test_a_candidates_bad_setting_names_the_candidate_and_key(tmp_path, setting, key):
    path = _write(tmp_path, candidates=[{"name": "lo", "set": ["train.strategy=lora", setting]}])
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(info.value).startswith(f"{path}: candidate lo: {PRESET}: ")
    assert key in str(info.value)


def test_the_fingerprint_follows_what_shapes_the_candidates(tmp_path):
    spec = load_sweep(_write(tmp_path, grid={"train.seed": [1, 2]}))
    same = sweep_fingerprint(spec.candidate_configs(["train.num_threads=1"]), False)
    assert same == sweep_fingerprint(spec.candidate_configs(), False)
    assert same != sweep_fingerprint(spec.candidate_configs(["train.steps=5"]), False)
    assert same != sweep_fingerprint(spec.candidate_configs(), True)


@pytest.mark.parametrize(
    ("concurrency", "cores", "threads"), [(2, 2, 1), (1, 2, 2), (3, 16, 5), (4, 2, 1)]
)
def test_candidates_training_here_divide_the_cores(concurrency, cores, threads):
    assert threads_per_candidate(concurrency, cores) == threads


def test_fewer_candidates_than_the_concurrency_all_run_at_once(tmp_path):
    assert load_sweep(_write(tmp_path, concurrency=8, grid={"train.seed": [1, 2]})).at_once() == 2
    assert load_sweep(_write(tmp_path, concurrency=1, grid={"train.seed": [1, 2]})).at_once() == 1


def _inputs(threads: int) -> SweepInputs:
    return SweepInputs(
        "s", "sweep-run", "sqlite://", "flow-run", "fp", "/split", "/base", {}, threads
    )


@pytest.mark.parametrize(
    ("overrides", "threads"),
    [
        ([], 4),  # its share of the cores
        (["train.num_processes=2"], 2),  # split between its processes
        (["train.num_threads=3"], 3),  # set by hand: kept (the sweep warns)
        (["train.deployment=train-stage/gpu"], 0),  # trains on a pool: not this machine's
    ],
)
def test_a_candidate_training_here_gets_its_share_of_the_cores(tmp_path, overrides, threads):
    spec = load_sweep(_write(tmp_path, set=overrides, grid={"train.seed": [1, 2]}))
    name, config = spec.candidate_configs()[0]
    candidate = as_candidate(name, config, _inputs(4))
    assert candidate.train.num_threads == threads
    assert candidate.tracking.tags["mlflow.parentRunId"] == "sweep-run"
    assert candidate.fingerprint() == config.fingerprint()  # threads shape nothing
    assert as_candidate(name, config, _inputs(0)).train.num_threads == config.train.num_threads


def test_each_candidate_checkpoints_in_a_directory_of_its_own(tmp_path):
    spec = load_sweep(_write(tmp_path, grid={"train.seed": [1, 2]}))
    dirs = set()
    for name, config in spec.candidate_configs():
        tags = {"tuneforge.sweep": "s", "tuneforge.sweep_candidate": name}
        tagged = config.model_copy(
            update={"tracking": config.tracking.model_copy(update={"tags": tags})}
        )
        dirs.add(checkpoint_dir(tagged))
    plain = checkpoint_dir(spec.base_config())
    assert len(dirs) == 2 and plain not in dirs
    assert not any(Path(d).is_relative_to(plain) for d in dirs)


def _done(name: str, **metrics: float) -> CandidateOutcome:
    ctx = RunContext(f"run-{name}", "sqlite://", "/tmp")
    return CandidateOutcome(name=name, strategy="full", ctx=ctx, metrics=metrics)


def test_rank_puts_the_best_first_ties_to_the_lower_loss_failures_last():
    candidates = [
        CandidateOutcome("broken", "lora", error="lora: prepare_model: no such module"),
        _done("a", exact_match=0.5, eval_loss=2.0),
        _done("b", exact_match=0.7, eval_loss=3.0),
        _done("c", exact_match=0.5, eval_loss=1.0),
        _done("nan", exact_match=math.nan, eval_loss=0.1),
    ]
    ranked = rank(candidates, RegistryConfig(metric="exact_match"))
    assert [c.name for c in ranked] == ["b", "c", "a", "nan", "broken"]
    assert [c.rank for c in ranked] == [1, 2, 3, 4, 5]
    rows = leaderboard_rows(ranked, "exact_match")
    assert rows[-1]["status"] == "failed: lora: prepare_model: no such module"
    assert rows[-1]["run_id"] is None and rows[0]["run_id"] == "run-b"


def test_rank_on_a_loss_puts_the_lowest_first():
    candidates = [_done("a", eval_loss=2.0), _done("b", eval_loss=1.5)]
    ranked = rank(candidates, RegistryConfig(metric="eval_loss"))
    assert [c.name for c in ranked] == ["b", "a"]
