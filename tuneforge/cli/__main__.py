"""`python -m tuneforge.cli ...`: the `tuneforge` command, run from a source tree."""

from tuneforge.cli import app

app()
