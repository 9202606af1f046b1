"""Dataset schemas: which column of a file holds which of tuneforge's fields, so a row becomes
the shape validation checks, and no column is dropped without being asked to.

    data:
      schema: auto            # or alpaca, dolly, sharegpt, openai, prompt_completion, text
      columns: {input: context, task: category}   # tuneforge field -> the file's column
      ignore_columns: [id]    # columns the file has that nothing should read

    tuneforge validate dolly.jsonl --schema dolly --column task=category --ignore id

The schemas (fields marked ? are optional; the file's column for each field in brackets):

    alpaca             instruction, input?, output, task?
    dolly              instruction, input? [context], output [response], task? [category]
    prompt_completion  instruction [prompt], output [completion], task?
    openai             messages: [{role, content}, ...] (system? user/assistant turns), task?
    sharegpt           messages [conversations]: [{from, value}, ...] (from: system, human,
                       gpt), task?
    text               text (raw text, no prompt: causal-LM loss on every token), task?
    preference         instruction? [prompt], chosen, rejected, task? (preference pairs: the
                       prompt as text or turns; chosen and rejected as text, or as whole
                       conversations sharing their prompt turns, the prompt then optional)
    feedback           instruction [prompt], output [completion], label (true: a good
                       answer, false: a bad one), task? (unpaired feedback)

`auto` picks the one schema whose required columns the file has (preferring the one that
leaves fewest columns unread); `data.columns` applies to whichever is picked. A column that
the schema and the mapping do not read makes the file unusable, naming it, unless
`data.ignore_columns` lists it: training on half of each row is worse than not training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_NAMES = (
    "auto",
    "alpaca",
    "dolly",
    "sharegpt",
    "openai",
    "prompt_completion",
    "text",
    "preference",
    "feedback",
)
FIELDS = (
    "instruction",
    "input",
    "output",
    "messages",
    "text",
    "chosen",
    "rejected",
    "label",
    "task",
)


class SchemaError(ValueError):
    """The file's columns fit no schema, or fit several, or include one nothing reads; the
    message is one line naming the file, the columns and the setting that would fix it."""


@dataclass(frozen=True)
class Schema:
    name: str
    # tuneforge field -> the column it is read from by default
    columns: Mapping[str, str]
    required: frozenset[str]
    # How turns are spelled in the file: (turn key for the role, for the text, role names)
    turns: tuple[str, str, Mapping[str, str]] | None = None

    def describe(self) -> str:
        fields = [f"{f}{'' if f in self.required else '?'}" for f in self.columns]
        renamed = [f"{f}={c}" for f, c in self.columns.items() if c != f]
        return f"{self.name} ({', '.join(fields)}{'; ' if renamed else ''}{', '.join(renamed)})"


_CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
# ShareGPT exports name the speakers in several ways; these are the ones in common use.
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
}

SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema(
            "alpaca",
            {"instruction": "instruction", "input": "input", "output": "output", "task": "task"},
            frozenset({"instruction", "output"}),
        ),
        Schema(
            "dolly",
            {
                "instruction": "instruction",
                "input": "context",
                "output": "response",
                "task": "category",
            },
            frozenset({"instruction", "output"}),
        ),
        Schema(
            "prompt_completion",
            {"instruction": "prompt", "output": "completion", "task": "task"},
            frozenset({"instruction", "output"}),
        ),
        Schema(
            "openai",
            {"messages": "messages", "task": "task"},
            frozenset({"messages"}),
            turns=("role", "content", _CHAT_ROLES),
        ),
        Schema(
            "sharegpt",
            {"messages": "conversations", "task": "task"},
            frozenset({"messages"}),
            turns=("from", "value", _SHAREGPT_ROLES),
        ),
        Schema("text", {"text": "text", "task": "task"}, frozenset({"text"})),
        # Turns (a prompt's, or whole conversations) are spelled {role, content}, as TRL's
        # conversational preference data is.
        Schema(
            "preference",
            {"instruction": "prompt", "chosen": "chosen", "rejected": "rejected", "task": "task"},
            frozenset({"chosen", "rejected"}),
            turns=("role", "content", _CHAT_ROLES),
        ),
        Schema(
            "feedback",
            {"instruction": "prompt", "output": "completion", "label": "label", "task": "task"},
            frozenset({"instruction", "output", "label"}),
            turns=("role", "content", _CHAT_ROLES),
        ),
    )
}


@dataclass(frozen=True)
class ColumnMap:
    """How one file is read: its schema, and the file's column for each field it has."""

    schema: str
    columns: dict[str, str]  # tuneforge field -> the file's column (fields the file has)
    ignored: tuple[str, ...] = ()
    detected: bool = False  # picked by `auto`
    turns: tuple[str, str, Mapping[str, str]] | None = field(default=None, compare=False)

    def column(self, name: str) -> str:
        """The file's name for a tuneforge field (the field's own name when unmapped)."""
        return self.columns.get(name, name)

    def summary(self) -> dict[str, Any]:
        return {"schema": self.schema, "columns": dict(self.columns)}


def _listing(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _fit(schema: Schema, mapping: Mapping[str, str]) -> dict[str, str]:
    """The schema's columns with the user's mapping on top (fields it has only)."""
    return {f: mapping.get(f, column) for f, column in schema.columns.items()}


def _missing(wanted: Mapping[str, str], found: Mapping[str, int], schema: Schema) -> list[str]:
    return [f for f in schema.required if wanted[f] not in found]


def resolve_columns(
    found: Mapping[str, int],
    source: str,
    schema: str = "auto",
    columns: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> ColumnMap:
    """Decides how a file is read from the columns it has (`found`: column -> rows having
    it). Raises `SchemaError` (one line) when no schema fits, several fit equally, a column
    the user mapped is not there, or a column is left unread."""
    columns = dict(columns or {})
    ignore = tuple(ignore)
    unknown_fields = sorted(set(columns) - set(FIELDS))
    if unknown_fields:
        raise SchemaError(
            f"data.columns: {_listing(unknown_fields)} is not a tuneforge field; the fields "
            f"are {', '.join(FIELDS)}"
        )
    have = ", ".join(f"{c} ({n} rows)" for c, n in sorted(found.items())) or "none"
    auto = schema == "auto"
    chosen = _detect(found, source, columns, ignore, have) if auto else SCHEMAS[schema]
    wanted = _fit(chosen, columns)
    stray = sorted(set(columns) - set(chosen.columns))
    if stray:
        raise SchemaError(
            f"data.columns: schema {chosen.name} has no field {_listing(stray)}; its fields: "
            f"{', '.join(chosen.columns)}"
        )
    missing = _missing(wanted, found, chosen)
    if missing:
        need = ", ".join(f"{f} (column {wanted[f]!r})" for f in missing)
        raise SchemaError(
            f"{source}: schema {chosen.name} needs {need}; the file has {have}; map a column "
            f"with --column FIELD=COLUMN (data.columns)"
        )
    absent = [f for f in columns if columns[f] not in found]
    if absent:
        f = absent[0]
        raise SchemaError(
            f"{source}: data.columns maps {f} to column {columns[f]!r}, which the file does not "
            f"have; it has {have}"
        )
    reads = {c for f, c in wanted.items() if c in found}
    unread = [c for c in found if c not in reads and c not in ignore]
    if unread:
        raise SchemaError(
            f"{source}: {_unread(unread, found)} not read by schema {chosen.name} "
            f"({', '.join(f'{f}={c}' for f, c in wanted.items())}); map "
            f"{'it' if len(unread) == 1 else 'them'} with --column FIELD=COLUMN (data.columns), "
            f"or leave {'it' if len(unread) == 1 else 'them'} out on purpose with --ignore "
            f"{unread[0]} (data.ignore_columns)"
        )
    return ColumnMap(
        schema=chosen.name,
        columns={f: c for f, c in wanted.items() if c in found},
        ignored=tuple(c for c in ignore if c in found),
        detected=schema == "auto",
        turns=chosen.turns,
    )


def _unread(unread: list[str], found: Mapping[str, int]) -> str:
    if len(unread) == 1:
        return f"column {unread[0]!r} ({found[unread[0]]} rows) is"
    return f"columns {_listing(unread)} are"


def _detect(
    found: Mapping[str, int],
    source: str,
    columns: Mapping[str, str],
    ignore: tuple[str, ...],
    have: str,
) -> Schema:
    """The one schema that fits; ties go to the one leaving fewest columns unread."""
    fitting = []
    for candidate in SCHEMAS.values():
        if set(columns) - set(candidate.columns):
            continue  # the user mapped a field this schema does not have
        wanted = _fit(candidate, columns)
        if _missing(wanted, found, candidate):
            continue
        reads = set(wanted.values())
        unread = [c for c in found if c not in reads and c not in ignore]
        reading = {f: c for f, c in wanted.items() if c in found}
        fitting.append((len(unread), candidate, tuple(sorted(reading.items()))))
    if not fitting:
        needs = "; ".join(
            f"{s.name} needs {', '.join(s.columns[f] for f in sorted(s.required))}"
            for s in SCHEMAS.values()
        )
        raise SchemaError(
            f"{source}: the columns fit no schema (the file has {have}; {needs}); name one "
            f"with --schema (data.schema) and map its fields with --column FIELD=COLUMN "
            f"(data.columns)"
        )
    fewest = min(n for n, _, _ in fitting)
    best = [(s, reading) for n, s, reading in fitting if n == fewest]
    # Schemas that would read the same columns into the same fields are one choice (say a
    # mapping of every field of an instruction/output file): the first, in SCHEMAS order.
    if len({reading for _, reading in best}) == 1:
        return best[0][0]
    best = [s for s, _ in best]
    if len(best) > 1:
        raise SchemaError(
            f"{source}: the columns fit schemas {', '.join(s.name for s in best)} equally "
            f"(the file has {have}); choose one with --schema (data.schema)"
        )
    return best[0]


def convert_turns(value: Any, cmap: ColumnMap, field: str = "messages") -> tuple[Any, str | None]:
    """A file's turns (in tuneforge field `field`) as `{role, content}` messages, or the
    reason they cannot be (one phrase, in the file's own terms). Anything that is not a list
    of objects is returned as is, for validation's own format check to report."""
    if cmap.turns is None or not isinstance(value, list):
        return value, None
    role_key, text_key, roles = cmap.turns
    column = cmap.column(field)
    messages = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            return value, None
        extra = sorted(set(turn) - {role_key, text_key})
        if extra:
            return value, (
                f"{column}: turn {i} has key {_listing(extra)}, which tuneforge does not read "
                f"(a turn is {{{role_key}, {text_key}}})"
            )
        speaker, text = turn.get(role_key), turn.get(text_key)
        if not isinstance(speaker, str) or speaker not in roles:
            names = ", ".join(sorted(roles))
            return value, f"{column}: turn {i} has {role_key} {speaker!r}; expected one of {names}"
        if text_key not in turn:
            return value, f"{column}: turn {i} has no {text_key!r}"
        if not isinstance(text, str):
            return value, f"{column}: turn {i}: {text_key} must be text"
        messages.append({"role": roles[speaker], "content": text})
    return messages, None
