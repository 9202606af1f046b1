"""Pipeline files (tuneforge/pipelines.py): every stage's config is validated when the file
loads, and each problem is one line naming the file or the stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import PRESET, REPO
from tuneforge.config import ConfigError
from tuneforge.pipelines import check_pipeline, load_pipeline


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _two_stages(**second) -> dict:
    return {
        "name": "p",
        "stages": [
            {"name": "first", "preset": str(PRESET)},
            {"name": "second", "preset": str(PRESET), **second},
        ],
    }


@pytest.mark.parametrize("path", sorted((REPO / "deployments" / "pipelines").glob("*.yaml")))
def test_every_shipped_pipeline_loads_and_chains_its_stages(path: Path):
    spec = load_pipeline(path)
    first = spec.stage_config(0, None)
    assert first.model.source == "tiny"  # the first stage keeps its preset's source
    second = spec.stage_config(1, "models:/flan-mini-pretrained/3")
    assert second.model.source == "models:/flan-mini-pretrained/3"  # pinned by number


def test_a_bad_key_in_a_later_stage_fails_at_load_naming_the_stage(tmp_path):
    path = _write(tmp_path, _two_stages(set=["train.stepz=3"]))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert str(info.value).startswith("stage second: ")
    assert "train.stepz: unknown key" in str(info.value) and "\n" not in str(info.value)


def test_a_stage_can_keep_its_presets_own_source(tmp_path):
    spec = load_pipeline(_write(tmp_path, _two_stages(start_from="preset")))
    assert spec.stage_config(1, "models:/x/1").model.source == "tiny"


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        ({"name": "p", "stages": []}, "stages: List should have at least 1 item"),
        (
            {"name": "p", "stages": [{"name": "a", "preset": "x"}, {"name": "a", "preset": "x"}]},
            "stage names must be unique: a",
        ),
        (_two_stages(sett=[]), "stages.1.sett: unknown key"),
        (
            _two_stages(set=["tracking.tracking_uri=sqlite:///other.db"]),
            "every stage must use the same tracking.tracking_uri",
        ),
    ],
)
def test_bad_pipeline_files_fail_in_one_line(tmp_path, spec, phrase):
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(tmp_path, spec))
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_preflight_checks_every_stage_before_the_first_runs(tmp_path):
    path = _write(tmp_path, _two_stages(set=[f"data.path={tmp_path / 'missing.jsonl'}"]))
    spec = load_pipeline(path, [f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"^stage second: data\.path: .*missing\.jsonl: file not"):
        check_pipeline(spec, [f"output_dir={tmp_path / 'out'}"])
