"""Installing an example plugin package for real, for the length of a test module."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


def pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stderr[-3000:]}"


def is_installed(dist: str) -> bool:
    try:
        distribution(dist)
    except PackageNotFoundError:
        return False
    return True


def forget(module: str) -> None:
    """Drops what this process cached about installed packages and the plugin module."""
    from tuneforge.plugins import discovery

    for name in [m for m in sys.modules if m.partition(".")[0] == module]:
        del sys.modules[name]
    importlib.invalidate_caches()
    discovery.discover.cache_clear()
    discovery.discover_evaluators.cache_clear()


@contextmanager
def installed(example: Path, dist: str, module: str, scratch: Path) -> Iterator[None]:
    """Installs `example` (no deps, no build isolation: offline) from a copy in `scratch`, so
    its build files stay out of the repository; uninstalls it afterwards unless it was
    installed before (e.g. a developer's `pip install -e`)."""
    preinstalled = is_installed(dist)
    if not preinstalled:
        src = scratch / example.name
        ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        shutil.copytree(example, src, ignore=ignore)
        pip("install", "--no-deps", "--no-build-isolation", "-q", str(src))
    forget(module)
    try:
        yield
    finally:
        if not preinstalled:
            pip("uninstall", "-y", dist)
        forget(module)
