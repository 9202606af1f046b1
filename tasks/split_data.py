"""The `split_dataset` task: a run's valid records split into train and eval files
(`tuneforge.data.splitting`: by content hash, so a row keeps its side as data grows); and
`replay_parent_data`, which mixes a share of the parent version's training rows into the
training file (`data.replay`, `tuneforge.data.replay`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import task

from tuneforge import lineage
from tuneforge.config import DataConfig
from tuneforge.data.splitting import split_file
from tuneforge.jsonl import read_jsonl, write_jsonl
from tuneforge.run_context import RunContext
from tuneforge.tracking import MetricLogger


@dataclass(frozen=True)
class SplitPaths:
    train_path: str
    eval_path: str
    train_rows: int
    eval_rows: int


@task(name="split_dataset")
def split_dataset(*, valid_path: str, data: DataConfig) -> SplitPaths:
    """Writes `train.jsonl` and `eval.jsonl` beside the valid records (`data.eval_fraction`,
    `data.seed`, whole `data.holdout_tasks` families to eval)."""
    out = Path(valid_path).parent
    train, evaluation = out / "train.jsonl", out / "eval.jsonl"
    n_train, n_eval = split_file(
        Path(valid_path), train, evaluation, data.eval_fraction, data.seed, data.holdout_tasks
    )
    if not n_train or not n_eval:
        train.unlink()
        evaluation.unlink()
        raise ValueError(
            f"{valid_path}: split of {n_train + n_eval} valid rows left train={n_train}, "
            f"eval={n_eval}; adjust data.eval_fraction or data.holdout_tasks"
        )
    return SplitPaths(str(train), str(evaluation), n_train, n_eval)


@task(name="replay_parent_data")
def replay_parent_data(*, split: SplitPaths, data: DataConfig, ctx: RunContext) -> SplitPaths:
    """Adds `data.replay` of the parent version's training rows to the training split (never
    to the eval split): the parent is the registry version this run's base was resolved to
    (`tuneforge.parent_version`), its rows rebuilt from the data config its run recorded.
    Tags the run with what it replayed and logs `data.replayed_rows`."""
    from mlflow.tracking import MlflowClient

    from tuneforge.data.replay import parent_training_rows, replay_sample

    client = MlflowClient(ctx.tracking_uri)
    parent = client.get_run(ctx.run_id).data.tags.get(lineage.PARENT_VERSION)
    if not parent:
        raise ValueError("data.replay: the base is not a registered version; nothing to replay")
    name, _, version = parent.rpartition("/")
    tags = client.get_run(client.get_model_version(name, version).run_id).data.tags
    recorded = tags.get(lineage.DATA_CONFIG)
    if recorded is None:
        raise ValueError(
            f"data.replay: {parent}'s run records no data config (registered before replay "
            "existed); retrain it once to make its data replayable"
        )
    scratch = Path(ctx.path("replay"))
    parent_rows = parent_training_rows(
        DataConfig.model_validate(json.loads(recorded)),
        tags.get(lineage.DATA_FINGERPRINT, ""),
        scratch,
        f"version {parent}",
    )
    picked = replay_sample(parent_rows, data.replay, data.seed)
    train = read_jsonl(split.train_path) + picked
    write_jsonl(train, split.train_path)
    logger = MetricLogger(ctx.tracking_uri, ctx.run_id)
    logger.log({"data.replayed_rows": len(picked)}, step=0)
    logger.flush()
    replayed = f"{len(picked)} of {len(parent_rows)} training rows of {parent}"
    client.set_tag(ctx.run_id, lineage.REPLAYED, replayed)
    shutil.rmtree(scratch, ignore_errors=True)
    return replace(split, train_rows=len(train))
