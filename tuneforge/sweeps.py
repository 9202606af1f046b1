"""Sweep files: one preset, several candidates (strategies, settings, learning rates, ...),
trained on the same split and ranked; only the winner goes through the promotion gate.

    name: tiny-strategies
    preset: ../presets/tiny-cpu.yaml        # relative to this file
    set: [train.steps=300]                  # overrides for every candidate, before its own
    concurrency: 2                          # candidates training at once
    candidates:                             # default: one, the preset as it is
      - name: full
        set: [train.strategy=full]
      - name: lora
        set: [train.strategy=lora, train.learning_rate=0.01]
    grid:                                   # crossed with every candidate above
      train.seed: [0, 1]

Candidates change `train.*` only: they share the data, its split, the base model, evaluation
and the registry, so their scores are comparable and the base is scored once. Every
candidate's config is validated when the file loads, before anything trains.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneforge.config import ConfigError, RunConfig, load_config, load_spec_file

NAME = r"^[A-Za-z0-9][\w.=,+-]*$"  # a candidate's name: MLflow run names, Prefect run names


class CandidateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=NAME, max_length=100, description="The candidate's name, unique in the sweep."
    )
    set: list[str] = Field([], description="train.* overrides of this candidate")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z][\w.-]*$",
        max_length=100,
        description="The sweep's name: its flow run, its MLflow run and its candidates' runs.",
    )
    preset: str = Field(
        min_length=1,
        description="The run config every candidate starts from, relative to the file.",
    )
    set: list[str] = Field([], description="Overrides for every candidate, before its own")
    candidates: list[CandidateSpec] = Field(
        [], description="Named sets of train.* overrides (none: the preset as it is)"
    )
    grid: dict[str, list[Any]] = Field(
        {},
        description=(
            "train.* key -> values; every combination is crossed with every candidate, e.g. "
            "{train.learning_rate: [0.001, 0.003]} makes lora.learning_rate=0.001, ..."
        ),
    )
    concurrency: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "Candidates training at once. On this machine the cores are divided between them "
            "(train.num_threads = cores // concurrency, each in a process of its own); on a "
            "work pool (train.deployment) each also waits for a slot of train.concurrency_limit."
        ),
    )
    register_others: bool = Field(
        False,
        description=(
            "Also register every other finished candidate as a version: no alias, tagged with "
            "its rank, to compare or promote by hand later (tuneforge models promote)."
        ),
    )
    folder: str = Field(
        ".", description="Where the file was read from (set on load): the preset is relative to it."
    )

    @field_validator("grid")
    @classmethod
    def _grid_varies_train_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
            if not isinstance(values, list):
                raise ValueError(f"{key}: expected a list of values")
        return grid

    @model_validator(mode="after")
    def _names_are_unique(self) -> SweepSpec:
        names = [name for name, _ in self.expanded()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"candidate names must be unique: {', '.join(repeated)}")
        return self

    def expanded(self) -> list[tuple[str, list[str]]]:
        """Every candidate as (name, its own overrides): `candidates` crossed with `grid`,
        named `CANDIDATE.KEY=VALUE,...` (`KEY=VALUE,...` without candidates)."""
        named = [(c.name, list(c.set)) for c in self.candidates]
        if not self.grid:
            return named or [("preset", [])]
        keys = list(self.grid)
        out = []
        for name, own in named or [("", [])]:
            for values in itertools.product(*(self.grid[k] for k in keys)):
                pairs = [(k, _yaml_scalar(v)) for k, v in zip(keys, values, strict=True)]
                label = ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in pairs)
                label = re.sub(r"[^\w.=,+-]", "_", label)  # [q_proj, v_proj] -> _q_proj__v_proj_
                out.append(
                    (f"{name}.{label}" if name else label, [*own, *(f"{k}={v}" for k, v in pairs)])
                )
        return out

    def candidate_configs(
        self, extra: list[str] | tuple[str, ...] = ()
    ) -> list[tuple[str, RunConfig]]:
        """Each candidate's config: the preset, the sweep's `set`, `extra` (the command
        line's), then the candidate's own overrides. One-line `ConfigError`s name it."""
        out = []
        for name, own in self.expanded():
            for assignment in own:
                key = assignment.partition("=")[0]
                if not key.startswith("train."):
                    raise ConfigError(
                        f"candidate {name}: {key}: a candidate may change train.* only (the "
                        "candidates share the data, base model, evaluation and registry, so "
                        "they are compared on the same split); put it in the sweep's set"
                    )
            try:
                config = load_config(self.preset_path, [*self.set, *extra, *own])
            except ConfigError as exc:
                raise ConfigError(f"candidate {name}: {exc}") from None
            out.append((name, config))
        lengths = {name: config.train.max_length for name, config in out}
        if len(set(lengths.values())) > 1:  # evaluation cuts examples at it: one base score
            given = ", ".join(f"{name} {length}" for name, length in lengths.items())
            raise ConfigError(
                f"train.max_length differs between candidates ({given}); the sweep scores the "
                "base once, on examples cut at one length: set it in the sweep's set"
            )
        return out

    def base_config(self, extra: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """The preset with the sweep's and the command line's overrides: what the candidates
        share (data, model, evaluation, registry, tracking)."""
        return load_config(self.preset_path, [*self.set, *extra])

    @property
    def preset_path(self) -> Path:
        return Path(self.folder) / self.preset

    def at_once(self) -> int:
        """Candidates that train side by side: `concurrency`, or fewer when there are fewer."""
        return min(self.concurrency, len(self.expanded()))


def _yaml_scalar(value: Any) -> str:
    """`value` as it would be written after `--set KEY=` (YAML flow style, one line)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def load_sweep(path: str | Path, extra: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Reads and validates a sweep file and every candidate's config."""
    path = Path(path)
    spec = load_spec_file(path, SweepSpec, "sweep", "with name, preset and candidates")
    try:
        spec.base_config(extra)  # its errors name the preset
        spec.candidate_configs(extra)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return spec


def check_sweep(config: RunConfig, candidates: list[tuple[str, RunConfig]]) -> None:
    """`tuneforge.preflight.check_run` on the shared config (data file, tracking server, ...)
    and on each candidate (a candidate's train.deployment, ...), failures naming it."""
    from tuneforge.preflight import check_run

    check_run(config)
    for name, candidate in candidates:
        try:
            check_run(candidate)
        except ConfigError as exc:
            raise ConfigError(f"candidate {name}: {exc}") from None


def sweep_fingerprint(configs: list[tuple[str, RunConfig]], register_others: bool) -> str:
    """A short hash of the candidates (names and what shapes each model): a sweep re-run on
    the same data with the same candidates is skipped, like an unchanged retrain."""
    blob = json.dumps(
        [[name, config.fingerprint()] for name, config in configs] + [register_others]
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def threads_per_candidate(concurrency: int, cores: int | None = None) -> int:
    """Threads each of `concurrency` candidates training side by side on this machine gets:
    the cores divided between them, at least one. More would oversubscribe the cores (two
    trainings each taking both cores of a 2-core machine fell from 21-31k to 500-3,700
    tokens/s, issue 17, 2026-12); fewer would leave some idle."""
    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)  # the cores this process may use
        cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return max(1, cores // concurrency)
