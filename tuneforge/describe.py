"""Settings that describe themselves: each field of a pydantic model as type, default and
description, for `tuneforge config`, `tuneforge strategies` and the docs."""

from __future__ import annotations

from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel


def describe_fields(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Each field of `model` (a config section or a plugin's `Settings`): its type (as written
    in Python), default, whether it is required (then its default is None) and description, by
    the name it has in YAML (its alias, if any)."""
    described = {}
    for key, field in model.model_fields.items():
        required = field.is_required()
        described[field.alias or key] = {
            "type": type_name(field.annotation),
            "default": None if required else field.get_default(call_default_factory=True),
            "required": required,
            "description": field.description or "",
        }
    return described


def type_name(annotation: Any) -> str:
    """`bool`, `int`, `list[str] | Literal['all-linear'] | None`: one spelling for every type,
    as it would be written in Python today (`Optional[X]` and `Union` come out as `|`)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin in (Union, UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
