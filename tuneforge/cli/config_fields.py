"""`tuneforge config`: every setting of a run config, with its type, default and description.

    tuneforge config                 # all of them, section by section
    tuneforge config train           # one section (model.tiny: a nested one)
    tuneforge config train.steps     # one key
    tuneforge config --json          # a list of {"key", "type", "default", "description",
                                     #   "required", "shapes_training"}

What it prints is what the pydantic models of tuneforge/config.py declare
(`Field(description=...)`), so the listing cannot drift from the config it describes.
"""

from __future__ import annotations

import textwrap
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from tuneforge.cli.output import JsonOption, fail, out, print_result


def config(
    section: Annotated[
        str | None,
        typer.Argument(help="A section (train, model.tiny) or one key (train.steps)"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List the run config's settings: dotted key, type, default and description."""
    from tuneforge.config import RunConfig

    fields = config_fields(RunConfig)
    if section is not None:
        fields = [f for f in fields if f["key"] == section or f["key"].startswith(f"{section}.")]
        if not fields:
            sections = ", ".join(config_sections(RunConfig))
            fail(f"no config section or key {section!r}; the sections are {sections}")
    print_result(fields, _render)


def config_fields(
    model: type[BaseModel], prefix: str = "", shaping: bool = True
) -> list[dict[str, Any]]:
    """Each field of `model` and of the sections nested in it, as `{"key", "type", "default",
    "description", "required", "shapes_training"}` with a dotted key (`train.steps`,
    `model.tiny.hidden_size`).

    A model's own fields come first, then each nested section's, in declaration order. A
    required field (no default) has default None and required True. `shapes_training` is
    False for a field declared `not_shaping` (or inside such a section): it changes how a run
    executes, not the model, and is left out of the config fingerprint and the resume key.
    """
    from tuneforge.config import fields_not_shaping
    from tuneforge.describe import describe_fields

    nested = _nested_sections(model)
    aliases = {field.alias or name: name for name, field in model.model_fields.items()}
    not_shaping = fields_not_shaping(model)
    listed = []
    for key, described in describe_fields(model).items():
        if key in nested:
            continue
        listed.append(
            {
                "key": f"{prefix}{key}",
                "type": described["type"],
                "default": described["default"],
                "description": described["description"],
                "required": described["required"],
                "shapes_training": shaping and aliases[key] not in not_shaping,
            }
        )
    for key, section in nested.items():
        inside = shaping and aliases[key] not in not_shaping
        listed += config_fields(section, f"{prefix}{key}.", inside)
    return listed


def config_sections(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted names of the sections nested in `model`: data, model, model.tiny, ..."""
    names = []
    for key, section in _nested_sections(model).items():
        names += [f"{prefix}{key}", *config_sections(section, f"{prefix}{key}.")]
    return names


def _nested_sections(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The fields of `model` that are sections themselves, by their YAML name."""
    return {
        field.alias or name: field.annotation
        for name, field in model.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


def _render(fields: list[dict[str, Any]]) -> None:
    for field in fields:
        default = "(required)" if field["required"] else f"= {field['default']!r}"
        how = "" if field["shapes_training"] else "  (does not shape training)"
        line = f"{field['key']}: {field['type']} {default}{how}"
        out.print(line, markup=False, highlight=False)
        if field["description"]:
            text = textwrap.fill(
                field["description"],
                width=max(out.width, 60),
                initial_indent="    ",
                subsequent_indent="    ",
            )
            out.print(text, markup=False, highlight=False, soft_wrap=True)
