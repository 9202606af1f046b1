"""Checks the import-linter contracts of pyproject.toml on tuneforge as it installs.

    python tools/lint_imports.py      # what `make lint` runs

import-linter finds a package's modules by walking its directory, and tuneforge.flows,
tuneforge.tasks and tuneforge.plugins live in the top-level folders flows/, tasks/ and
plugins/ (setuptools' package-dir mapping). So the installed layout is laid out in a temporary
directory, one symlink per module file or subpackage, and the contracts are checked there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    pyproject = ROOT / "pyproject.toml"
    mapping = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="tuneforge-imports-") as tmp:
        for package, folder in mapping.items():
            target = Path(tmp, *package.split("."))
            target.mkdir(parents=True, exist_ok=True)
            for entry in (ROOT / folder).iterdir():
                # Modules, and subpackages whole (tuneforge.training, tuneforge.cli); a mapped
                # folder's own subpackage is linked above, not again here.
                wanted = entry.suffix == ".py" or (entry / "__init__.py").is_file()
                if wanted and not (target / entry.name).exists():
                    (target / entry.name).symlink_to(entry)
        lint = Path(sys.executable).parent / "lint-imports"
        env = {**os.environ, "PYTHONPATH": tmp}
        return subprocess.call([str(lint), "--no-cache", str(pyproject)], cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
