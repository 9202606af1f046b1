"""The `tuneforge` command line.

    tuneforge run deployments/presets/tiny-cpu.yaml [--set train.steps=50 ...] [--debug] [--json]
    tuneforge pipeline deployments/pipelines/flan-mini.yaml [--set ...] [--json]
    tuneforge sweep deployments/sweeps/tiny-strategies.yaml [--set ...] [--json]
    tuneforge validate data/instructions.jsonl [--format jsonl] [--quarantine PATH] [--json]
    tuneforge evaluate models:/tuneforge-demo@champion data/instructions.jsonl [--json]
    tuneforge config [SECTION] [--json]
    tuneforge export models:/tuneforge-demo@champion --format merged|adapter|gguf --out DIR
    tuneforge serve models:/tuneforge-demo@champion [--port 8000]
    tuneforge strategies [NAME] [--json]
    tuneforge evaluators [NAME] [--json]
    tuneforge models list|show|compare|promote|rollback [--json]
    tuneforge slots list|release MODEL [--json]
    tuneforge stack up|status|down [--dir .stack]
    tuneforge data push data/instructions.jsonl [--json]
    tuneforge sample-data data/instructions.jsonl

Errors a user can fix (a bad config key, an unusable data file) print one line and exit 2;
with --json the last line on stdout is then {"error": ...}, and otherwise the result.

One module per command group: jobs (run, pipeline, sweep), data (validate, evaluate, data
push, sample-data), config_fields (config), plugins (strategies, evaluators), serving (export,
serve), models, slots, stack;
output holds what they share (--json, print_result, fail).
"""

from __future__ import annotations

import os

import typer

from tuneforge.secrets import install_redaction

# MLflow's per-file download bars add nothing to a run's output, and neither MLflow nor
# Prefect should phone home from a training job (offline machines log errors trying).
# Prefect's temporary server (no PREFECT_API_URL) gets 90 s to start instead of 20: on a busy
# machine, or with a second run starting beside the first, 20 s is not always enough.
for _name, _value in (
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
):
    os.environ.setdefault(_name, _value)

# Imported after the defaults above: nothing these modules import may read them first.
from tuneforge.cli import (  # noqa: E402
    config_fields,
    data,
    jobs,
    models,
    plugins,
    serving,
    slots,
    stack,
)

__all__ = ["app"]

# install_redaction runs before every command: secrets in the environment are masked in all
# logs and output (tuneforge/secrets.py).
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__.split("\n\n")[0],
    callback=install_redaction,
)
app.command()(jobs.run)
app.command()(jobs.pipeline)
app.command()(jobs.sweep)
app.command()(data.validate)
app.command()(data.evaluate)
app.command()(config_fields.config)
app.command()(serving.export)
app.command()(serving.serve)
app.command()(plugins.strategies)
app.command()(plugins.evaluators)
app.add_typer(models.models_app, name="models")
app.add_typer(slots.slots_app, name="slots")
app.add_typer(stack.stack_app, name="stack")
app.add_typer(data.data_app, name="data")
app.command("sample-data")(data.sample_data)
