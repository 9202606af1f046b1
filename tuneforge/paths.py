"""Names from configs and data become path components only through here.

A registered model name, a run name or a task family comes from a user or a dataset; used as
a path component it could climb out of the output directory (`../../etc`) or be absolute.
"""

from __future__ import annotations

import re
from pathlib import Path


def safe_component(name: str) -> str:
    """`name` as one harmless path component: anything but letters, digits, `.`, `_`, `-`
    becomes `_`, and a name of dots only (`.`, `..`) is refused."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if not cleaned.strip("."):
        raise ValueError(f"{name!r} cannot be used as a file or directory name")
    return cleaned


def inside(root: str | Path, *parts: str) -> Path:
    """`root/parts...`, refusing a result that resolves outside `root`."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{Path(*parts)} would be written outside {base}")
    return path
