"""Named points where a run can be made to stop and wait, so crash tests can kill it there.

    TUNEFORGE_PAUSE_AT=register:version-created tuneforge run PRESET   # then kill it
    TUNEFORGE_PAUSE_AT=evaluate:tuned TUNEFORGE_RESUME_WHEN=/tmp/go tuneforge run PRESET

A run whose `TUNEFORGE_PAUSE_AT` names the point it reaches prints one line to stderr
(`tuneforge: paused at NAME`) and sleeps until it is killed, or, with `TUNEFORGE_RESUME_WHEN`,
until that file exists (then it prints `tuneforge: resumed at NAME` and goes on). Without the
variable a point costs one dictionary lookup. The points: `evaluate:base` and `evaluate:tuned`
(the start of each evaluation), `register:version-created` (a version exists, no alias yet).
"""

from __future__ import annotations

import os
import sys
import time

ENV = "TUNEFORGE_PAUSE_AT"
RESUME_ENV = "TUNEFORGE_RESUME_WHEN"


def pause_point(name: str) -> None:
    """Sleeps while `TUNEFORGE_PAUSE_AT` is `name` (until killed, or until the file named by
    `TUNEFORGE_RESUME_WHEN` exists); returns at once otherwise."""
    if os.environ.get(ENV) != name:
        return
    print(f"tuneforge: paused at {name}", file=sys.stderr, flush=True)
    resume = os.environ.get(RESUME_ENV)
    while not (resume and os.path.exists(resume)):
        time.sleep(0.2)
    print(f"tuneforge: resumed at {name}", file=sys.stderr, flush=True)
