"""Named points where a run can be made to stop and wait, so crash tests can kill it there.

    TUNEFORGE_PAUSE_AT=register:version-created tuneforge run PRESET   # then kill it

A run whose `TUNEFORGE_PAUSE_AT` names the point it reaches prints one line to stderr
(`tuneforge: paused at NAME`) and sleeps until it is killed. Without the variable a point
costs one dictionary lookup. The points: `evaluate:base` and `evaluate:tuned` (the start of
each evaluation), `register:version-created` (a version exists, no alias yet).
"""

from __future__ import annotations

import os
import sys
import time

ENV = "TUNEFORGE_PAUSE_AT"


def pause_point(name: str) -> None:
    """Sleeps forever when `TUNEFORGE_PAUSE_AT` is `name`; returns at once otherwise."""
    if os.environ.get(ENV) != name:
        return
    print(f"tuneforge: paused at {name}", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)
