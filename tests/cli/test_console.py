"""What `tuneforge run` leaves on the console when something fails: Prefect's console handler
prints the record without its traceback, while every other handler (the Prefect API handler,
which feeds the task log) still gets it; with --debug nothing is changed."""

from __future__ import annotations

import io
import logging

from prefect.logging.handlers import PrefectConsoleHandler

from tuneforge.cli.jobs import _console_without_tracebacks, prefect_console_handlers


class _Collect(logging.Handler):
    """Stands in for the API handler: keeps each record formatted, traceback included."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_console_shows_the_message_without_the_traceback_other_handlers_keep_it():
    logger = logging.getLogger("prefect.task_runs.tuneforge-test")
    console_stream = io.StringIO()
    console = PrefectConsoleHandler(stream=console_stream)
    api = _Collect()
    logger.handlers, logger.propagate = [api, console], False
    saved = {h: h.formatter for h in prefect_console_handlers()}
    try:
        _console_without_tracebacks()
        try:
            raise ValueError("strategy 'x' (pkg 1.0): prepare_model: nothing trains")
        except ValueError:
            logger.exception("Task run failed")
        logger.error("a line after it")
    finally:
        for handler, formatter in saved.items():
            handler.setFormatter(formatter)
        logger.handlers = []
    shown = console_stream.getvalue()
    assert "Task run failed" in shown and "a line after it" in shown
    assert "Traceback" not in shown and "nothing trains" not in shown
    assert "Traceback (most recent call last)" in api.lines[0]
    assert "ValueError: strategy 'x' (pkg 1.0): prepare_model: nothing trains" in api.lines[0]
