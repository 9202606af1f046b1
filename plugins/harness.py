"""`lm_eval` benchmark evaluator: lm-evaluation-harness tasks (EleutherAI's `lm-eval`, 0.4) on
the model in memory, offline, from local task files: what a retrain must not forget.

    evaluation:
      benchmarks:
        lm_eval: {path: deployments/benchmarks, limit: 100}
    registry:
      guards: {bench.guard_uppercase.exact_match: 0.05}

Each task file is a harness task in the harness's own YAML format (`generate_until`,
`loglikelihood`, `multiple_choice`, ...; `deployments/benchmarks/` is the bundled suite and the
template). Local `data_files` are read relative to the task file, so a suite can be moved as a
folder; `lm_eval --include_path DIR` reads them relative to where it runs, so run it from DIR
to compare. A file that uses the harness's own YAML tags (`!function`) is handed to the harness
by name and reads its data as the harness does. Results are `task.metric` (the harness's
`metric,filter` with the default filter `none` left out, else `task.metric.filter`), with one
sample row per document and metric. Needs `pip install 'tuneforge[harness]'`.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneforge.plugins import BenchmarkEvaluator, BenchmarkResult


class HarnessSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        min_length=1,
        description=(
            "A harness task file (YAML), or a folder of them (searched recursively), relative "
            "to the working directory; e.g. deployments/benchmarks."
        ),
    )
    tasks: list[str] | None = Field(
        None, min_length=1, description="The tasks to run, by name; null: every task in path."
    )
    limit: int | None = Field(
        None,
        ge=1,
        description=(
            "Documents per task at most (the first ones); null: all. Evaluation time grows with "
            "it, and a guard's paired test needs enough documents to tell a drop from noise."
        ),
    )
    num_fewshot: int | None = Field(
        None, ge=0, description="Examples in each prompt; null: the task file's own setting."
    )
    apply_chat_template: bool = Field(
        False,
        description=(
            "Render each prompt through the tokenizer's chat template as a user turn. For chat "
            "models, with task prompts that are the bare request; the bundled suite writes the "
            "plain template the tiny models train with, so it leaves this off."
        ),
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=1024,
        description=(
            "Requests per forward pass. A number, not the harness's auto: auto probes batch "
            "sizes up to 64 at full length, and on a CPU that can run out of memory."
        ),
    )
    max_length: int | None = Field(
        None,
        gt=8,
        description="Tokens of context the harness keeps; null: the model's own maximum.",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: str) -> str:
        if not Path(path).exists():
            raise ValueError(f"{path}: no such task file or folder")
        return path


def _metric_key(task: str, metric: str, filter_name: str) -> str:
    return f"{task}.{metric}" if filter_name == "none" else f"{task}.{metric}.{filter_name}"


class LmEvalHarness(BenchmarkEvaluator):
    name: ClassVar[str] = "lm_eval"
    description: ClassVar[str] = (
        "lm-evaluation-harness tasks from local files, on the model in memory: bench.<task>.*"
    )
    Settings: ClassVar[type[BaseModel]] = HarnessSettings

    def __init__(self, settings: HarnessSettings) -> None:
        self.settings = settings

    # The task files ------------------------------------------------------------------------

    @cached_property
    def _found(self) -> tuple[dict[str, Any], set[str]]:
        """Task name -> its config (plain YAML, data files made absolute), and the folders of
        files the harness must read itself (its own YAML tags)."""
        import yaml

        root = Path(self.settings.path)
        files = sorted(root.rglob("*.yaml")) if root.is_dir() else [root]
        configs: dict[str, Any] = {}
        custom: set[str] = set()
        for file in files:
            try:
                config = yaml.safe_load(file.read_text(encoding="utf-8"))
            except yaml.constructor.ConstructorError:  # !function and other harness tags
                custom.add(str(file.parent))
                continue
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise ValueError(f"{file}: not a readable task file ({exc})") from None
            if isinstance(config, dict) and isinstance(config.get("task"), str):
                configs[config["task"]] = _with_local_data(config, file.parent)
        if not configs and not custom:
            raise ValueError(f"{self.settings.path}: no harness task files (*.yaml) there")
        return configs, custom

    @cached_property
    def _checked(self) -> dict[str, Any]:
        """The configured tasks, loaded once to check them (what `metrics` reads)."""
        return self._load_tasks()

    @cached_property
    def _manager(self) -> Any:
        """The harness's task index over these files alone: never its thousands of built-in
        tasks (indexing those takes 15 s here, and this evaluation is offline anyway)."""
        from lm_eval.tasks import TaskManager

        paths = sorted(self._found[1]) or None
        return TaskManager(include_path=paths, include_defaults=False)

    def _load_tasks(self) -> dict[str, Any]:
        """The harness's Task objects of the configured tasks, by name (their data loaded):
        fresh ones for each evaluation, as the harness keeps each run's requests on them."""
        from lm_eval.tasks import get_task_dict

        configs, custom = self._found
        manager = self._manager
        available = sorted({*configs, *(manager.all_tasks if custom else [])})
        wanted = self.settings.tasks or sorted(configs)
        unknown = [t for t in wanted if t not in available]
        if unknown:
            raise ValueError(
                f"evaluation.benchmarks.lm_eval.tasks: {', '.join(unknown)} not in "
                f"{self.settings.path} (tasks there: {', '.join(available) or 'none'})"
            )
        requested = [configs.get(name, name) for name in wanted]
        try:
            loaded = get_task_dict(requested, manager)
        except FileNotFoundError as exc:
            raise ValueError(f"{self.settings.path}: a task's data is missing: {exc}") from None
        return {name: task for name, task in loaded.items() if name in wanted}

    def metrics(self) -> dict[str, bool]:
        found: dict[str, bool] = {}
        for name, task in self._checked.items():
            filters = [f["name"] for f in task.config.filter_list or []] or ["none"]
            for metric, higher in task.higher_is_better().items():
                for filter_name in filters:
                    found[_metric_key(name, metric, filter_name)] = bool(higher)
        return found

    # Scoring -------------------------------------------------------------------------------

    def evaluate(self, model: Any, tokenizer: Any) -> BenchmarkResult:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        s = self.settings
        lm = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=s.batch_size, max_length=s.max_length
        )
        tasks = list(self._load_tasks().values())
        done = simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=self._manager,
            limit=s.limit,
            num_fewshot=s.num_fewshot,
            apply_chat_template=s.apply_chat_template,
            log_samples=True,
            bootstrap_iters=0,  # no stderr: the gate's paired test reads the samples instead
        )
        metrics: dict[str, float] = {}
        directions: dict[str, bool] = {}
        for name, results in done["results"].items():
            for key, value in results.items():
                metric, _, filter_name = key.partition(",")
                if filter_name and "_stderr" not in metric and _is_number(value):
                    metrics[_metric_key(name, metric, filter_name)] = float(value)
                    higher = done["higher_is_better"].get(name, {}).get(metric, True)
                    directions[_metric_key(name, metric, filter_name)] = bool(higher)
        samples = [
            _sample_row(name, sample)
            for name, task_samples in done["samples"].items()
            for sample in task_samples
        ]
        return BenchmarkResult(metrics, directions, [row for rows in samples for row in rows])


def _with_local_data(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`config` with its local `data_files` (relative to its task file) made absolute."""
    kwargs = dict(config.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if not files:
        return config

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            return str((folder / value).resolve())
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    kwargs["data_files"] = (
        {k: resolve(v) for k, v in files.items()} if isinstance(files, dict) else resolve(files)
    )
    return {**config, "dataset_kwargs": kwargs}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sample_row(task: str, sample: dict[str, Any]) -> list[dict[str, Any]]:
    """One harness sample as a row per metric it carries."""
    response = sample.get("filtered_resps")
    shown = response[0] if isinstance(response, list) and len(response) == 1 else response
    return [
        {
            "metric": _metric_key(task, metric, sample.get("filter", "none")),
            "doc_id": sample["doc_id"],
            "value": float(sample[metric]),
            "target": str(sample.get("target")),
            "response": str(shown),
        }
        for metric in sample.get("metrics", [])
        if _is_number(sample.get(metric))
    ]
