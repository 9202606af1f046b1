"""One installed namespace: flows/, tasks/ and plugins/ install as tuneforge.flows,
tuneforge.tasks and tuneforge.plugins, in the editable install the suite runs on and in a
regular wheel; nothing installs a top-level `tasks`, `flows` or `plugins`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

PARTS = ("tuneforge", "flows", "tasks", "plugins")


def _python(code: str, cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_outside_the_checkout_only_the_tuneforge_namespace_imports(tmp_path):
    found = _python(
        "import importlib.util as u, json;"
        "print(json.dumps({n: u.find_spec(n) is not None for n in ('tasks', 'flows', 'plugins')}))",
        cwd=tmp_path,
    )
    assert json.loads(found) == {"tasks": False, "flows": False, "plugins": False}
    where = _python(
        "import tuneforge.tasks.train, tuneforge.training.loop, tuneforge.flows.retrain,"
        " tuneforge.plugins.full;"
        "print(tuneforge.tasks.train.__file__)",
        cwd=tmp_path,
    )
    assert Path(where) == REPO / "tasks" / "train.py"  # the editable install maps the folder


def test_a_regular_wheel_installs_one_namespace_that_imports(tmp_path):
    source = tmp_path / "src"
    for part in PARTS:
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("tuneforge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"tuneforge", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for module in ("tasks/train.py", "flows/retrain.py", "plugins/full.py", "plugins/testing.py"):
        assert f"tuneforge/{module}" in names
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "full = tuneforge.plugins.full:FullStrategy" in entry_points

    # Installed as files (not the editable mapping) and imported from there.
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    where = _python(
        "import tuneforge.tasks.train, tuneforge.training.loop, tuneforge.cli,"
        " tuneforge.plugins.testing;"
        "print(tuneforge.tasks.train.__file__)",
        cwd=tmp_path,
        PYTHONPATH=str(target),
    )
    assert Path(where) == target / "tuneforge" / "tasks" / "train.py"
