"""`tuneforge config`: the run config's settings, listed from the pydantic models themselves."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.cli.config_fields import config_fields, config_sections
from tuneforge.config import RunConfig, TrainConfig

SECTIONS = ["data", "model", "model.tiny", "train", "evaluation", "registry", "tracking"]


def _config(*args: str):
    return CliRunner().invoke(app, ["config", *args])


def test_lists_train_steps_with_its_type_default_and_description():
    result = _config()

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = lines.index("train.steps: int = 300")
    shown = []
    for line in lines[at + 1 :]:
        if not line.startswith("    "):
            break
        shown.append(line.strip())
    description = TrainConfig.model_fields["steps"].description
    assert description and " ".join(shown) == " ".join(description.split())  # wrapped, indented
    assert "data.path: str (required)  (does not shape training)" in lines
    assert "model.tiny.hidden_size: int = 128" in lines
    assert "name: str = 'retrain'  (does not shape training)" in lines  # no prefix at the top


def test_a_section_narrows_the_listing_to_its_keys_and_its_subsections():
    tiny = _config("model.tiny")
    model = _config("model")

    assert tiny.exit_code == model.exit_code == 0, tiny.output + model.output
    keys = [line.split(":")[0] for line in tiny.stdout.splitlines() if not line.startswith(" ")]
    assert keys and all(key.startswith("model.tiny.") for key in keys)
    assert "model.tiny.num_layers" in keys
    assert "model.source: str = 'tiny'" in model.stdout
    assert "model.tiny.num_layers: int = 2" in model.stdout
    assert "train." not in model.stdout


def test_a_single_key():
    result = _config("train.steps", "--json")

    assert result.exit_code == 0, result.output
    (field,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert field == {
        "key": "train.steps",
        "type": "int",
        "default": 300,
        "description": TrainConfig.model_fields["steps"].description,
        "required": False,
        "shapes_training": True,
    }


def test_settings_that_do_not_shape_training_say_so():
    """The mark the config fingerprint and the resume key read (`not_shaping`), shown."""
    fields = {f["key"]: f for f in config_fields(RunConfig)}
    assert not fields["train.log_every"]["shapes_training"]
    assert not fields["tracking.experiment"]["shapes_training"]  # a section marked whole
    assert not fields["data.path"]["shapes_training"]
    assert fields["train.learning_rate"]["shapes_training"]
    assert fields["model.tiny.hidden_size"]["shapes_training"]
    lines = _config("train").stdout.splitlines()
    assert "train.log_every: int = 10  (does not shape training)" in lines
    assert "train.steps: int = 300" in lines


def test_an_unknown_section_fails_in_one_line_listing_the_sections():
    result = _config("trian")

    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "'trian'" in line
    assert ", ".join(SECTIONS) in line
    assert result.stdout == ""


def test_json_lists_every_key_once_with_its_type_default_and_description():
    result = _config("--json")

    assert result.exit_code == 0, result.output
    fields = json.loads(result.stdout.strip().splitlines()[-1])
    keys = [f["key"] for f in fields]
    assert len(keys) == len(set(keys))
    expected = {"key", "type", "default", "description", "required", "shapes_training"}
    assert all(set(f) == expected for f in fields)
    by_key = {f["key"]: f for f in fields}
    assert by_key["data.path"]["required"] and by_key["data.path"]["default"] is None
    assert by_key["data.schema"]["type"].startswith("Literal['auto', 'alpaca'")  # YAML name
    revision = by_key["model.revision"]  # a default of None is not "required"
    assert revision["default"] is None and not revision["required"]
    assert by_key["registry.max_p_value"]["type"] == "float | None"
    assert "model.tiny" not in by_key  # a section is listed by its keys, not as one


def test_sections_and_keys_follow_the_config_models():
    assert config_sections(RunConfig) == SECTIONS
    keys = {f["key"] for f in config_fields(RunConfig)}
    assert {f"train.{name}" for name in TrainConfig.model_fields} <= keys
    # Every field the listing shows says what its Field(description=...) says, no more.
    described = {f["key"]: f["description"] for f in config_fields(TrainConfig, "train.")}
    for name, field in TrainConfig.model_fields.items():
        assert described[f"train.{field.alias or name}"] == (field.description or "")
