"""Bad input end to end: every hostile data file, config and model source gets a quarantine
entry with a reason or a one-line error (exit 2), never a traceback; and names from configs and
data cannot climb out of the output directory.

    .venv/bin/pytest -q tests/test_bad_input.py

Data cases run the real `tuneforge validate --json`; exit 1 means some rows were quarantined,
and then valid + rejected == total with a reason for each entry.
"""

from __future__ import annotations

import codecs
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import PRESET, _free_port
from tuneforge.cli import app
from tuneforge.config import ConfigError, load_config, parse_config
from tuneforge.data.reading import DataLoadError, read_rows
from tuneforge.data.validation import validate_rows
from tuneforge.data_schemas import SchemaError
from tuneforge.jsonl import write_jsonl
from tuneforge.paths import inside, safe_component
from tuneforge.preflight import check_run

OK = '{"instruction": "Say hi.", "output": "Hi."}'
OK2 = '{"instruction": "Say bye.", "output": "Bye."}'
CHAT_OK = (
    '{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}'
)
CHAT_USER_ONLY = '{"messages": [{"role": "user", "content": "Anyone?"}]}'
TUNEFORGE = Path(sys.executable).parent / "tuneforge"


def _lines(*lines: str) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


# name, file content, exit code, phrase in the first quarantine reason (exit 1) or the error
DATA_CASES = [
    ("malformed.jsonl", _lines(OK, '{"instruction": "x", "output": '), 1, "invalid JSON"),
    ("not_object.jsonl", _lines(OK, "[1, 2]"), 1, "not a JSON object (got list)"),
    ("wrong_types.jsonl", _lines(OK, '{"instruction": 1, "output": true}'), 1, "must be text"),
    ("missing_output.jsonl", _lines(OK, '{"instruction": "x"}'), 1, "output is missing"),
    # Columns nothing reads, or that fit no schema, make the whole file unusable.
    (
        "unknown_keys.jsonl",
        _lines(OK, '{"question": "p", "answer": "r"}'),
        2,
        "columns 'question', 'answer' are not read by schema alpaca",
    ),
    ("missing_cols.csv", b"prompt,response\np,r\nq,s\n", 2, "the columns fit no schema"),
    ("mixed_shapes.jsonl", _lines(OK, CHAT_OK), 2, "column 'messages' (1 rows) is not read"),
    ("all_rejected.csv", b"instruction,output\nq,\n,a\n", 2, "every row was rejected"),
    ("fewer_cells.csv", b"instruction,output,task\nq,a,t\nq2,a2\n", 1, "fewer cells than header"),
    ("more_cells.csv", b"instruction,output\nq,a\nq2,a2,extra\n", 1, "more cells than header"),
    ("empty.jsonl", b"", 2, "file is empty"),
    ("blank.jsonl", b" \n\t\n", 2, "file is empty"),
    ("empty.csv", b"", 2, "file is empty"),
    ("header_only.csv", b"instruction,output\n", 2, "header but no rows"),
    ("empty_array.json", b"[]", 2, "JSON array is empty"),
    ("binary.jsonl", bytes(range(256)) * 8, 2, "binary data (NUL bytes)"),
    ("garbage.jsonl", b"\x89PNG\r\n\x1a\n\xff\xd8\xff\xe0" * 50, 2, "not UTF-8 text"),
    ("garbage.parquet", b"PAR1 not really parquet PAR1", 2, "not a readable Parquet file"),
    ("latin1.jsonl", '{"instruction": "café", "output": "x"}\n'.encode("latin-1"), 2, "line 1"),
    ("latin1.csv", "instruction,output\ncafé,x\n".encode("latin-1"), 2, "not UTF-8 text"),
    ("utf16_no_bom.jsonl", (OK + "\n").encode("utf-16-le"), 2, "needs a byte-order mark"),
    ("cr_only.jsonl", f"{OK}\r{OK2}\r".encode(), 2, "no line is a JSON object"),
    ("duplicate_keys_only.jsonl", _lines('{"a": 1, "a": 2}'), 2, "'a' appears twice"),
    ("repeated_header.csv", b"instruction,instruction,output\nq,q,a\n", 2, "repeats column"),
    ("deep.json", b"[" * 5000 + b"]" * 5000, 2, "nested deeper than 64 levels"),
    ("utf16_bom.jsonl", (f"{OK}\n{OK}\n").encode("utf-16"), 1, "duplicate of row 1"),
    (
        "utf32_bom.csv",
        "instruction,output\nq,a\n,a\n".encode("utf-32"),
        1,
        "instruction is missing",
    ),
    (
        "bom.jsonl",
        codecs.BOM_UTF8 + _lines(OK, "   ", '{"instruction": " ", "output": "x"}'),
        1,
        "instruction: is blank",
    ),
    (
        "bom_per_line.jsonl",
        codecs.BOM_UTF8 + _lines(OK) + codecs.BOM_UTF8 + _lines(OK2, OK),
        1,
        "duplicate of row 1",
    ),
    ("bom.csv", codecs.BOM_UTF8 + b"instruction,output\nq,a\nq,a\n", 1, "duplicate of row 2"),
    ("duplicates.jsonl", _lines(OK, OK2, OK, OK), 1, "duplicate of row 1"),
    (
        "whitespace.jsonl",
        _lines(OK, '{"instruction": "q", "output": "\\u3000\\t "}'),
        1,
        "output: is blank",
    ),
    ("whitespace.csv", b'instruction,output\nq,a\n"   ",a2\n', 1, "instruction: is blank"),
    ("no_assistant.jsonl", _lines(CHAT_OK, CHAT_USER_ONLY), 1, "needs a user turn and an"),
    (
        "assistant_not_last.jsonl",
        _lines(
            CHAT_OK,
            '{"messages": [{"role": "assistant", "content": "a"}, '
            '{"role": "user", "content": "q"}]}',
        ),
        1,
        "must end with the assistant's turn",
    ),
    (
        "enormous.jsonl",
        _lines(OK, json.dumps({"instruction": "q", "output": "x" * 3_000_000})),
        1,
        "output: is longer than 2000 characters",
    ),
    (
        "deep_row.jsonl",
        _lines(OK, '{"instruction": "q", "output": ' + "[" * 900 + "]" * 900 + "}"),
        1,
        "nested deeper than 64 levels",
    ),
    (
        "huge_number.jsonl",
        _lines(OK, '{"instruction": "q", "output": ' + "9" * 5000 + "}"),
        1,
        "invalid JSON: Exceeds the limit",
    ),
    ("nan.jsonl", _lines(OK, '{"instruction": NaN, "output": "x"}'), 1, "NaN is not JSON"),
    (
        "duplicate_key.jsonl",
        _lines(OK, '{"instruction": "a", "instruction": "b", "output": "c"}'),
        1,
        "'instruction' appears twice",
    ),
    (
        "lone_surrogate.jsonl",
        _lines(OK, '{"instruction": "\\ud800", "output": "x"}'),
        1,
        "instruction: is not valid Unicode",
    ),
    (
        "task_traversal.jsonl",
        _lines(OK, '{"instruction": "q", "output": "a", "task": "../../x"}'),
        1,
        "task: must be a family name, not a path",
    ),
    (
        "task_absolute.jsonl",
        _lines(OK, '{"instruction": "q", "output": "a", "task": "/etc"}'),
        1,
        "task: must be a family name",
    ),
    (
        "chat_csv_bad.csv",
        b'messages\n"[{""role"": ""user"", ""content"": ""q""}]"\nnot json\n'
        b'"[{""role"": ""user"", ""content"": ""q""}, '
        b'{""role"": ""assistant"", ""content"": ""a""}]"\n',
        1,
        "messages: needs a user turn and an assistant turn",
    ),
]


def _validate(path: Path, quarantine: Path):
    return CliRunner().invoke(
        app, ["validate", str(path), "--json", "--quarantine", str(quarantine)]
    )


def _one_line_error(result, *phrases: str) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("name", "content", "code", "phrase"), DATA_CASES, ids=[c[0] for c in DATA_CASES]
)
def test_bad_data_is_quarantined_or_refused_in_one_line(tmp_path, name, content, code, phrase):
    path = tmp_path / name
    path.write_bytes(content)
    quarantine = tmp_path / "q.jsonl"

    result = _validate(path, quarantine)

    if code == 2 and phrase == "every row was rejected":  # the rows' reasons, then the error
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: {phrase}")
        return
    if code == 2:
        _one_line_error(result, str(path), phrase)
        assert not quarantine.exists()
        return
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["valid"] + summary["rejected"] == summary["total"] == len(read_rows(str(path)))
    entries = [json.loads(line) for line in quarantine.read_text(encoding="utf-8").splitlines()]
    assert len(entries) == summary["rejected"] >= 1
    assert all(isinstance(e["reason"], str) and e["reason"].strip() for e in entries)
    assert all(isinstance(e["row"], int) and e["record"] is not None for e in entries)
    assert phrase in entries[0]["reason"]


def test_quarantined_lone_surrogate_is_kept_exactly(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(_lines(OK, '{"instruction": "a\\ud800b", "output": "x"}'))

    _validate(path, tmp_path / "q.jsonl")

    entry = json.loads((tmp_path / "q.jsonl").read_text(encoding="utf-8"))
    assert entry["record"] == {"instruction": "a\ud800b", "output": "x"}


def test_installed_command_on_hostile_file_has_no_traceback(tmp_path):
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(_lines(OK, "[" * 100_000, '{"instruction": "\\udfff", "output": 1e999}'))

    proc = subprocess.run(
        [str(TUNEFORGE), "validate", str(path), "--json", "--quarantine", str(tmp_path / "q")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert json.loads(proc.stdout.splitlines()[-1])["rejected"] == 2


# Property: random JSONL files never crash the loader or validator, and lose no row

# Every code point, lone surrogates and controls included; no BOM, which a reader strips.
_TEXT = st.text(st.characters(exclude_categories=(), exclude_characters="\ufeff"), max_size=20)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=10,
)
_ROW = st.fixed_dictionaries(
    {},
    optional={
        "instruction": _JSON,
        "input": _JSON,
        "output": _JSON,
        "task": st.sampled_from(["add", "../x", "/abs", "a/b", "..", " "]) | _TEXT,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "system", "bot"]) | _JSON},
                optional={"content": _JSON},
            ),
            max_size=3,
        ),
    },
)
_LINE = (
    _ROW.map(lambda row: json.dumps(row, allow_nan=True))
    | st.just(OK)
    | _TEXT.filter(lambda t: "\n" not in t)
    | st.sampled_from(["[", "{}", "NaN", '{"a": 1, "a": 2}', "\ufeff" + OK, "[" * 200])
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(_LINE, max_size=8), encoding=st.sampled_from(["utf-8", "utf-16"]))
def test_random_jsonl_files_are_accounted_for_or_refused_in_one_line(tmp_path, lines, encoding):
    path = tmp_path / "random.jsonl"
    text = "\n".join(lines)
    path.write_bytes(text.encode(encoding, errors="surrogatepass"))

    try:
        rows = read_rows(str(path))
        valid, quarantine = validate_rows(rows, max_chars=50, source=str(path))
    except (DataLoadError, SchemaError) as exc:  # unusable as a whole: one line naming it
        assert "\n" not in str(exc) and str(path) in str(exc)
        return

    assert len(valid) + len(quarantine) == len(rows) == sum(1 for x in lines if x.strip())
    assert all(q["reason"] for q in quarantine)
    write_jsonl(valid + quarantine, tmp_path / "out.jsonl")  # every record can be written


# Config: each bad key is one line naming it, raised before any model is built

MINIMAL = {"data": {"path": "data/instructions.jsonl"}}

CONFIG_CASES = [
    ({"nmae": "x"}, "nmae: unknown key"),
    ({"train": {"stepz": 5}}, "train.stepz: unknown key"),
    ({"model": {"tiny": {"layers": 2}}}, "model.tiny.layers: unknown key"),
    ({"train": {"steps": "many"}}, "train.steps:"),
    ({"data": "data/instructions.jsonl"}, "data: Input should be a valid dictionary"),
    ({"data": {"path": 5}}, "data.path: Input should be a valid string"),
    ({"data": {"path": ""}}, "data.path:"),
    ({"data": {"path": "x.jsonl", "holdout_tasks": "add"}}, "data.holdout_tasks:"),
    ({"model": {"trust_remote_code": "yes"}}, "model.trust_remote_code:"),
    ({"train": {"steps": -1}}, "train.steps: Input should be greater than 0"),
    ({"train": {"learning_rate": -0.1}}, "train.learning_rate:"),
    ({"train": {"learning_rate": 5}}, "train.learning_rate: Input should be less than 1"),
    ({"data": {"path": "x.jsonl", "max_chars": -5}}, "data.max_chars:"),
    ({"data": {"path": "x.jsonl", "max_chars": 10**12}}, "data.max_chars: Input should be less"),
    ({"data": {"path": "x.jsonl", "eval_fraction": 1.5}}, "data.eval_fraction:"),
    (
        {"data": {"path": "x.jsonl", "max_rejected_fraction": float("nan")}},
        "data.max_rejected_fraction:",
    ),
    ({"evaluation": {"max_new_tokens": 0}}, "evaluation.max_new_tokens:"),
    ({"evaluation": {"max_new_tokens": 10**9}}, "evaluation.max_new_tokens: Input should be less"),
    ({"evaluation": {"batch_size": 10**7}}, "evaluation.batch_size:"),
    ({"model": {"tiny": {"hidden_size": 10**9}}}, "model.tiny.hidden_size: Input should be less"),
    ({"model": {"tiny": {"num_layers": 10_000}}}, "model.tiny.num_layers:"),
    ({"model": {"tiny": {"hidden_size": 100, "num_heads": 3}}}, "model.tiny: hidden_size must"),
    ({"registry": {"min_improvement": -1}}, "registry.min_improvement:"),
    ({"registry": {"wait_for_slot_s": -5}}, "registry.wait_for_slot_s:"),
    ({"registry": {"metric": "bleu"}}, "registry.metric: unknown metric"),
    ({"train": {"strategy": "nope"}}, "train.strategy:"),
    ({"train": {"settings": {"rank": 8}}}, "train.settings.rank: unknown key"),
    ({"registry": {"model_name": "../../x"}}, "registry.model_name: '../../x' is not a model name"),
    ({"registry": {"model_name": "/abs"}}, "registry.model_name:"),
    ({"registry": {"model_name": ".."}}, "registry.model_name:"),
    ({"registry": {"model_name": ""}}, "registry.model_name:"),
    ({"name": ""}, "name:"),
    ({"output_dir": ""}, "output_dir:"),
]


def _merge(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] |= value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(("extra", "phrase"), CONFIG_CASES, ids=[c[1] for c in CONFIG_CASES])
def test_bad_config_is_one_line_naming_the_key(extra, phrase):
    with pytest.raises(ConfigError) as info:
        parse_config(_merge(MINIMAL, extra), source="cfg.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("cfg.yaml: ")
    assert phrase in message


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["data.path=/no/such/data.jsonl"], "data.path: /no/such/data.jsonl: file not found"),
        (["model.source=./no/such/model"], "model.source: ./no/such/model: no such model"),
    ],
)
def test_missing_paths_fail_preflight_in_one_line(overrides, phrase):
    with pytest.raises(ConfigError, match=phrase) as info:
        check_run(load_config(PRESET, overrides))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["train.steps=-3"], "train.steps:"),
        (["model.tiny.hidden_size=99999999"], "model.tiny.hidden_size:"),
        (["registry.model_name=../../outside"], "registry.model_name:"),
        (["data.path=/no/such/data.jsonl"], "data.path:"),
        (["bogus=1"], "bogus: unknown key"),
    ],
)
def test_run_command_refuses_bad_config_before_any_work(tmp_path, overrides, phrase):
    args = ["run", str(PRESET), *(a for o in overrides for a in ("--set", o))]
    args += ["--set", f"output_dir={tmp_path / 'runs'}"]

    result = CliRunner().invoke(app, args)

    _one_line_error(result, phrase)
    assert not (tmp_path / "runs").exists()  # nothing was built or written


# Model sources: missing, corrupt, unresolvable: one line naming the source, exit 2


def _corrupt(model_dir: Path, name: str, content: bytes | None) -> None:
    if content is None:
        (model_dir / name).unlink()
    else:
        (model_dir / name).write_bytes(content)


def _config_with(model_dir: Path, **changes: object) -> bytes:
    return json.dumps(json.loads((model_dir / "config.json").read_text()) | changes).encode()


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("garbage_weights", "cannot load model: Error while deserializing header"),
        ("truncated_weights", "cannot load model: Error while deserializing header"),
        ("empty_weights", "cannot load model"),
        ("no_weights", "cannot load model"),
        ("pickle_weights_only", "cannot load model"),
        ("config_not_json", "cannot load model"),
        ("config_a_list", "cannot load model"),
        ("config_unknown_type", "cannot load model"),
        ("shapes_differ_from_config", "the weights' shapes do not match config.json"),
        ("tokenizer_garbage", "cannot load model"),
        ("no_config", "directory has no config.json"),
    ],
)
def test_corrupt_checkpoint_fails_evaluate_in_one_line(tiny_model_dir, tmp_path, case, phrase):
    broken = tmp_path / case
    shutil.copytree(tiny_model_dir, broken)
    weights = (broken / "model.safetensors").read_bytes()
    corruption = {
        "garbage_weights": ("model.safetensors", b"\x00garbage" * 10),
        "truncated_weights": ("model.safetensors", weights[: len(weights) // 2]),
        "empty_weights": ("model.safetensors", b""),
        "no_weights": ("model.safetensors", None),
        "config_not_json": ("config.json", b"{not json"),
        "config_a_list": ("config.json", b"[]"),
        "config_unknown_type": ("config.json", b'{"model_type": "no-such-architecture"}'),
        "shapes_differ_from_config": ("config.json", _config_with(broken, hidden_size=128)),
        "tokenizer_garbage": ("tokenizer.json", b"{garbage"),
        "no_config": ("config.json", None),
    }
    if case == "pickle_weights_only":
        (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    else:
        _corrupt(broken, *corruption[case])
    data = tmp_path / "d.jsonl"
    data.write_bytes(_lines(OK))

    result = CliRunner().invoke(app, ["evaluate", str(broken), str(data), "--json"])

    _one_line_error(result, str(broken), phrase)


@pytest.mark.parametrize(
    ("source", "tracking", "phrase"),
    [
        ("{tmp}/missing", None, "no such model directory"),
        ("{tmp}/d.jsonl", None, "is a file; model.source needs a checkpoint directory"),
        ("no/such/hub/id", None, "no such model directory"),
        ("someorg/somemodel", None, "cannot fetch from the hub"),  # HF_HUB_OFFLINE=1 in tests
        ("models:/never-registered@champion", "sqlite", "never-registered"),
        ("models:/never-registered/3", "sqlite", "not found"),
        ("models:/", "sqlite", "Not a proper models:/ URI"),
        ("models:/x@bad alias", "sqlite", "Invalid alias name"),
        ("models:/x@champion", "dead-server", "cannot reach http://127.0.0.1:"),
    ],
)
def test_unresolvable_model_source_fails_evaluate_in_one_line(tmp_path, source, tracking, phrase):
    data = tmp_path / "d.jsonl"
    data.write_bytes(_lines(OK))
    source = source.format(tmp=tmp_path)
    args = ["evaluate", source, str(data), "--json"]
    if tracking == "sqlite":
        args += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    elif tracking == "dead-server":
        args += ["--tracking-uri", f"http://127.0.0.1:{_free_port()}"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    error = result.stderr.strip().splitlines()[-1]  # MLflow may log creating a fresh database
    assert error.startswith(f"error: {source}") and phrase in error
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [
        ("--max-new-tokens", "0", "--max-new-tokens: Input should be greater than 0"),
        ("--max-examples", "-1", "--max-examples:"),
        ("--max-length", "3", "--max-length:"),
    ],
)
def test_evaluate_options_are_checked_before_any_model_loads(tmp_path, option, value, phrase):
    result = CliRunner().invoke(
        app, ["evaluate", "tiny", str(tmp_path / "none.jsonl"), option, value]
    )
    _one_line_error(result, phrase)


# Paths: names from configs and data never reach outside the output directory

HOSTILE = ["../../x", "/abs", "..", ".", "a/../../b", "~/.ssh/authorized_keys", "C:\\x", "x\x00y"]


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_component_keeps_a_hostile_name_inside_the_output_dir(tmp_path, name):
    root = tmp_path / "runs"
    try:
        component = safe_component(name)
    except ValueError as exc:
        assert repr(name) in str(exc)  # dots only: refused, naming it
        return
    path = inside(root, "checkpoints", component)
    assert path.is_relative_to(root.resolve()) and path.parent == (root / "checkpoints").resolve()
    path.mkdir(parents=True)
    assert [p for p in tmp_path.rglob("*") if not p.is_relative_to(root)] == []


@pytest.mark.parametrize("parts", [("../../x",), ("/abs",), ("..",), ("a", "..", "..", "b")])
def test_inside_refuses_a_path_that_leaves_the_root(tmp_path, parts):
    with pytest.raises(ValueError, match="would be written outside"):
        inside(tmp_path / "runs", *parts)


def test_inside_refuses_a_symlink_out_of_the_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="would be written outside"):
        inside(root, "link", "escaped")


@pytest.mark.parametrize("task", ["../../x", "/abs", "..", ".", "a//b", "a/./b", "x/"])
def test_task_family_that_is_a_path_is_quarantined(task):
    from tuneforge.data.reading import RawRow

    rows = [RawRow(1, {"instruction": "q", "output": "a", "task": task})]
    valid, quarantine = validate_rows(rows, max_chars=100)
    assert valid == [] and "task: must be a family name, not a path" in quarantine[0]["reason"]


@pytest.mark.parametrize("task", ["add", "qa/math", "v1.2", "Reverse words"])
def test_ordinary_task_families_stay_valid(task):
    from tuneforge.data.reading import RawRow

    valid, _ = validate_rows([RawRow(1, {"instruction": "q", "output": "a", "task": task})], 100)
    assert valid[0]["task"] == task
