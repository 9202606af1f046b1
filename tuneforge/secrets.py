"""Mask secrets in everything the `tuneforge` command logs or prints.

    from tuneforge.secrets import install_redaction, redact
    install_redaction()   # the CLI does this before any command runs
    redact("http://me:hunter2@mlflow:5000")   # -> "http://***@mlflow:5000"

What counts as a secret: the value of any environment variable whose name has a secret-looking
word in it (`HF_TOKEN`, `MLFLOW_TRACKING_PASSWORD`, `AWS_SECRET_ACCESS_KEY`, `MY_API_KEY`, ...),
and the user-info part of any URL (`scheme://user:password@host`).

Where it is masked: every log record of every logger, at creation (so the console, Prefect's API
log handler and any file handler see only the masked text, tracebacks included), and whatever
the process writes to `sys.stdout` / `sys.stderr` as text (rich output, one-line errors, Python's
own traceback). Not covered: subprocesses (they inherit the raw file descriptors), bytes written
to `sys.stdout.buffer`, and a secret split across two separate `write` calls. Those are the
trade-offs of masking at the edges; the first line of defence is not logging secrets at all
(credentials never go in the config, which is logged as MLflow params and Prefect parameters).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

MASK = "***"

# Whole `_`-separated words, so TOKENIZERS_PARALLELISM is not a token while HF_TOKEN is.
_SECRET_WORDS = {
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "CREDENTIALS",
    "KEY",
    "APIKEY",
    "AUTH",
}
# Shorter values are flags and switches ("true", "1", "basic"): masking them everywhere would
# garble every log line and protect nothing.
MIN_SECRET_LENGTH = 8
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][\w+.-]*://)[^\s/@]+@")


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    return bool(_SECRET_WORDS & set(name.upper().split("_")))


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of the secret-looking variables in `environ`, longest first (so a value that
    contains another is masked whole)."""
    found = {v for k, v in environ.items() if looks_secret(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(found, key=len, reverse=True)


class Redactor:
    """Masks a fixed set of secret values and any URL user-info in text."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = list(values)

    def __call__(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", text)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with secrets from `environ` (default: this process's environment) masked."""
    return Redactor(secret_values(os.environ if environ is None else environ))(text)


class RedactingStream:
    """A text stream that masks secrets in what is written, delegating everything else."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self._redact = redactor

    def write(self, text: str) -> int:
        self._stream.write(self._redact(text))
        return len(text)  # callers check they were heard in full, not the masked length

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redacting_record_factory(make_record: Any, redactor: Redactor) -> Any:
    """Wraps a log record factory (`logging.getLogRecordFactory()`) so that each record's
    message and traceback come out masked."""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string is logging's to report, later
            return record
        masked = redactor(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set, so the traceback is masked once here.
            text = logging.Formatter().formatException(record.exc_info)
            masked = redactor(text)
            if masked != text:
                record.exc_text = masked
        return record

    factory.tuneforge_redacting = True  # type: ignore[attr-defined]
    return factory


def install_redaction() -> None:
    """Masks secrets in all log records and in text written to stdout and stderr from now on.

    Idempotent; no arguments, so it serves as the CLI's Typer callback. The secret values are
    read from the environment now: a variable set later is not masked (set credentials before
    starting tuneforge, as one does anyway).
    """
    redactor = Redactor(secret_values(os.environ))
    current = logging.getLogRecordFactory()
    if getattr(current, "tuneforge_redacting", False):
        current = current.__wrapped_factory__  # type: ignore[attr-defined]
    factory = redacting_record_factory(current, redactor)
    factory.__wrapped_factory__ = current  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, RedactingStream):
            stream = stream._stream
        setattr(sys, name, RedactingStream(stream, redactor))
