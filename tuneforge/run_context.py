"""What every task of one `retrain` needs to know about the run it belongs to.

The flow makes one `RunContext` once the MLflow run is open and hands it to each task, instead
of threading the run id, tracking URI and run directory through every signature. It is frozen
and holds plain strings, so Prefect can pickle it with a task's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunContext:
    run_id: str  # the MLflow run every task logs into
    tracking_uri: str  # where that run lives
    run_dir: str  # OUTPUT_DIR/<run id>: this run's files (data, base model, tuned model)
    trust_remote_code: bool = False  # model.trust_remote_code: load models' own code
    model_dtype: str = "float32"  # model.dtype: what models load in
    resumed: bool = False  # continues the MLflow run of a crashed retrain of the same config

    def path(self, *parts: str) -> str:
        """A path under the run directory, e.g. `ctx.path("data")`."""
        return str(Path(self.run_dir, *parts))
