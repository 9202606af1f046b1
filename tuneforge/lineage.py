"""Every name tuneforge writes where other tools read it: MLflow tags on runs, versions and
registered models, metric-name prefixes, aliases, Prefect names (concurrency limits, events)
and the entry-point groups plugins register under. Writers and readers import them from here,
so a misspelt name is an AttributeError at once, not a registry browser that finds nothing.

    from tuneforge import lineage
    client.set_tag(run_id, lineage.DATA_FINGERPRINT, report.fingerprint)

Tags named `tuneforge.*` on a run are copied to the version it registers (`TAG_PREFIX`), so
`tuneforge models show` and the model card list a version's whole lineage.
"""

from __future__ import annotations

import re

TAG_PREFIX = "tuneforge."

# What a version was trained from and how: set on the run, copied to the version.
STRATEGY = "tuneforge.strategy"
STRATEGY_PACKAGE = "tuneforge.strategy_package"  # the distribution==version that registered it
STRATEGY_SETTINGS = "tuneforge.strategy_settings"  # train.settings as JSON
CONFIG_HASH = "tuneforge.config_hash"  # RunConfig.fingerprint(): what shapes the model
BASE_MODEL = "tuneforge.base_model"  # model.source as configured
PARENT_VERSION = "tuneforge.parent_version"  # NAME/VERSION of a registry base, pinned
DATA_SOURCE = "tuneforge.data_source"  # data.path
DATA_FINGERPRINT = "tuneforge.data_fingerprint"  # hash of the validated rows
DATA_SCHEMA = "tuneforge.data_schema"  # the schema read and its column mapping
DATA_CONFIG = "tuneforge.data_config"  # the data section as JSON: how to rebuild its split
REPLAYED = "tuneforge.replayed"  # rows of which parent's training split a run replayed
MODEL_NAME = "tuneforge.model_name"  # registry.model_name
FLOW_RUN_ID = "tuneforge.flow_run_id"  # the Prefect flow run that trained it
PYTHON = "tuneforge.python"
CODE_VERSION = "tuneforge.code_version"  # git commit of the working tree
PACKAGES = "tuneforge.packages"  # versions of the libraries that shape training

# What became of a run.
DECISION = "tuneforge.decision"  # "champion: <why>" / "challenger: <why>", on run and version
REGISTERED_VERSION = "tuneforge.registered_version"  # NAME/VERSION, on the run
CHECKPOINT_STEP = "tuneforge.checkpoint_step"  # the step whose weights were registered
BATCHES = "tuneforge.batches"  # padding-free, or padded and why
TOKEN_CACHE = "tuneforge.token_cache"  # reused, built or off (tuneforge/training/token_cache.py)
SKIPPED = "tuneforge.skipped"  # why a run stopped early (data and config unchanged)
GUARDS = "tuneforge.guards"  # registry.guards checked: JSON, one entry per guard
EXPORTS = "tuneforge.exports"  # registry.export: JSON, format -> artifact path and bytes
ATTEMPT = "tuneforge.attempt"  # how many flow runs this MLflow run has been continued by
CRASHED = "tuneforge.crashed"  # why an unfinished run was ended by a later one

# On the registered model.
CHAMPION_HISTORY = "tuneforge.champion_history"  # versions that held champion, oldest first
# One registered-model tag per alias move: ALIAS_MOVE + "<ns since epoch>-<random>", a JSON
# {"alias", "from", "to", "by", "why", "at"} (tuneforge models history reads them back).
ALIAS_MOVE = "tuneforge.alias_move."
ROLLED_BACK = "tuneforge.rolled_back"  # on a version that lost champion to a rollback

# Pipelines and sweeps: on their own runs and on each stage's or candidate's.
PIPELINE = "tuneforge.pipeline"
PIPELINE_STAGE = "tuneforge.pipeline_stage"
PIPELINE_FLOW_RUN = "tuneforge.pipeline_flow_run"
SWEEP = "tuneforge.sweep"
SWEEP_CANDIDATE = "tuneforge.sweep_candidate"
SWEEP_FINGERPRINT = "tuneforge.sweep_fingerprint"  # what an unchanged sweep is recognised by
SWEEP_FLOW_RUN_ID = "tuneforge.sweep_flow_run_id"
SWEEP_WINNER = "tuneforge.sweep_winner"

# Aliases of registered versions.
CHAMPION, CHALLENGER = "champion", "challenger"

# Metric names: `<label>.<metric>` for each model scored on a run's eval split
# (`tuned.exact_match`, `base.exact_match.held_out`). Training logs its own as `train.*`
# (the engine's TrainResult.summary_metrics and step metrics: written and read there, and
# shown as logged); the loss curve is the one other code reads.
BASE, TUNED, CHAMPION_SCORES = "base", "tuned", "champion"
TRAIN_LOSS = "train.loss"
BENCH = "bench"  # bench.<task>.<metric>: a benchmark evaluator's (evaluation.benchmarks)


def metric_key(label: str, metric: str) -> str:
    """`tuned.exact_match`: `metric` as scored for the model `label` (BASE, TUNED, ...)."""
    return f"{label}.{metric}"


def metric_safe(name: str) -> str:
    """A task family (or group) name usable inside an MLflow metric key (alphanumerics,
    _-. / space)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def scores_of(label: str, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics logged for `label`, without the label: `{"exact_match": ...}`."""
    prefix = f"{label}."
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


# Prefect: each model's retrain slot (a global concurrency limit of one), the tags a flow run
# holding it carries (`tuneforge slots list` reads them), and the event the on-new-data
# deployment is triggered by, with its resource id.
RETRAIN_SLOT = "retrain-"  # + the model name: the limit's name
SLOT_TAG = "tuneforge.slot:"  # + the slot's limit name: this flow run took that slot
LEASE_TAG = "tuneforge.lease:"  # + the lease id it holds the slot under, while it does
DATA_PUSHED = "tuneforge.data.pushed"
DATASET_RESOURCE = "tuneforge.dataset."  # + the data file's absolute path
# The pushed file's schema (alpaca, preference, feedback, ...), a label on the event's
# resource: deployments/prefect.yaml routes preference data to a preference strategy by it.
DATASET_SCHEMA = "tuneforge.schema"


def dataset_resource(path: str, name: str, schema: str) -> dict[str, str]:
    """The resource of a `tuneforge.data.pushed` event: the file (absolute path) and its
    schema, which the deployments' triggers match on."""
    return {
        "prefect.resource.id": f"{DATASET_RESOURCE}{path}",
        "prefect.resource.name": name,
        DATASET_SCHEMA: schema,
    }


# Entry-point groups: where built-in and third-party plugins register.
STRATEGIES = "tuneforge.strategies"
EVALUATORS = "tuneforge.evaluators"
