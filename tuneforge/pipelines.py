"""Pipeline files: a list of stages, each a `retrain` preset plus overrides, run in order.

    name: flan-mini
    set: [output_dir=runs/flan-mini]          # overrides for every stage, before its own
    stages:
      - name: pretrain
        preset: ../presets/flan-mini-pretrain.yaml   # relative to this file
      - name: instruct
        preset: ../presets/flan-mini-instruct.yaml
        set: [train.steps=300]
        # start_from: previous (default after the first stage): model.source becomes the
        # previous stage's registered version, pinned by number (models:/NAME/7), never an
        # alias a concurrent run could move; preset: keep the preset's own model.source.

Every stage's config is validated when the file loads, before any stage runs, so a typo in the
last stage fails in a second, not after an hour of the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.config import ConfigError, RunConfig, load_config, load_spec_file

PLACEHOLDER_VERSION = "models:/{name}/1"  # stands in for a version not registered yet


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z][\w-]*$",
        max_length=64,
        description="The stage's name, unique in the pipeline (its run: PIPELINE.STAGE).",
    )
    preset: str = Field(
        min_length=1, description="The stage's run config, relative to the pipeline file."
    )
    set: list[str] = Field(
        [], description="KEY=VALUE overrides of this stage, after the pipeline's."
    )
    start_from: Literal["previous", "preset"] | None = Field(
        None,
        description=(
            "previous: model.source is the version the stage before registered, pinned by "
            "number; preset: the preset's own model.source. null: previous, except for the "
            "first stage."
        ),
    )


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z][\w.-]*$",
        max_length=100,
        description="The pipeline's name: its flow run, its MLflow run and its stages' runs.",
    )
    set: list[str] = Field([], description="KEY=VALUE overrides of every stage, before its own.")
    stages: list[Stage] = Field(min_length=1, description="The stages, run in this order.")
    folder: str = Field(
        ".", description="Where the file was read from (set on load): presets are relative to it."
    )

    @model_validator(mode="after")
    def _stage_names_are_unique(self) -> PipelineSpec:
        names = [s.name for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage names must be unique: {', '.join(repeated)}")
        if self.stages[0].start_from == "previous":
            raise ValueError(f"stage {self.stages[0].name}: the first stage has no previous one")
        return self

    def chained(self, index: int) -> bool:
        """Whether stage `index` starts from the previous stage's registered version."""
        start = self.stages[index].start_from
        return index > 0 and start != "preset"

    def stage_config(
        self, index: int, previous: str | None, extra: list[str] | tuple[str, ...] = ()
    ) -> RunConfig:
        """Stage `index`'s config: its preset, the pipeline's `set`, `extra` (the command
        line's), the stage's own `set`, then (chained) `model.source=previous`."""
        stage = self.stages[index]
        overrides = [*self.set, *extra, *stage.set]
        if self.chained(index):
            overrides.append(f"model.source={previous}")
        try:
            return load_config(Path(self.folder) / stage.preset, overrides)
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name}: {exc}") from None


def load_pipeline(path: str | Path, extra: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
    """Reads and validates a pipeline file and every stage's config (`stage_configs`)."""
    path = Path(path)
    spec = load_spec_file(path, PipelineSpec, "pipeline", "with name and stages")
    tracking = {config.tracking.tracking_uri for config in stage_configs(spec, extra)}
    if len(tracking) > 1:  # a stage pins the one before by version: one registry for all
        raise ConfigError(f"{path}: every stage must use the same tracking.tracking_uri")
    return spec


def stage_configs(spec: PipelineSpec, extra: list[str] | tuple[str, ...] = ()) -> list[RunConfig]:
    """Every stage's config, a chained stage's with a stand-in for the version the stage
    before will register: what can be checked before the first stage runs."""
    configs: list[RunConfig] = []
    previous = None
    for index in range(len(spec.stages)):
        configs.append(spec.stage_config(index, previous, extra))
        previous = PLACEHOLDER_VERSION.format(name=configs[-1].registry.model_name)
    return configs


def check_pipeline(spec: PipelineSpec, extra: list[str] | tuple[str, ...] = ()) -> None:
    """`tuneforge.preflight.check_run` for every stage (data files exist, the tracking server
    answers, ...), each failure one line naming the stage."""
    from tuneforge.preflight import check_run

    for stage, config in zip(spec.stages, stage_configs(spec, extra), strict=True):
        try:
            check_run(config)
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name}: {exc}") from None
