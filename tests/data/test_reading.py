"""Tests for tuneforge/data/reading.py (and the load_dataset task): every format's reader,
row numbering, and unusable sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data.reading import (
    DataLoadError,
    RawRow,
    detect_format,
    parse_json,
    read_rows,
)
from tuneforge.run_context import RunContext
from tuneforge.tasks.load_data import load_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHAT = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load_error(source: Path | str, fmt: str = "auto") -> str:
    with pytest.raises(DataLoadError) as info:
        read_rows(str(source), fmt)
    message = str(info.value)
    assert "\n" not in message
    return message


# JSONL


def test_jsonl_row_numbers_are_line_numbers_and_blank_lines_keep_numbering(tmp_path):
    path = _write_lines(
        tmp_path / "d.jsonl",
        ['{"instruction": "a", "output": "b"}', "", "   ", '{"instruction": "c", "output": "d"}'],
    )

    rows = read_rows(str(path))

    assert [r.row for r in rows] == [1, 4]
    assert rows[1].record == {"instruction": "c", "output": "d"}


def test_jsonl_malformed_line_is_kept_as_parse_error_row(tmp_path):
    path = _write_lines(
        tmp_path / "d.jsonl",
        ['{"instruction": "a", "output": "b"}', '{"instruction": "broken', '"just a string"'],
    )

    rows = read_rows(str(path))

    assert len(rows) == 3
    broken, scalar = rows[1], rows[2]
    assert (broken.row, broken.record, broken.raw) == (2, None, '{"instruction": "broken')
    assert broken.parse_error.startswith("invalid JSON")
    assert (scalar.row, scalar.record, scalar.raw) == (3, None, '"just a string"')
    assert scalar.parse_error == "not a JSON object (got str)"


def test_jsonl_utf8_bom_does_not_break_first_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"instruction": "caf\xc3\xa9", "output": "ok"}\n')

    rows = read_rows(str(path))

    assert rows == [RawRow(1, {"instruction": "café", "output": "ok"})]


def test_ndjson_suffix_and_explicit_format_override(tmp_path):
    line = '{"instruction": "a", "output": "b"}'
    assert detect_format(str(_write_lines(tmp_path / "d.ndjson", [line]))) == "jsonl"
    other = _write_lines(tmp_path / "d.txt", [line])

    assert read_rows(str(other), "jsonl") == [RawRow(1, {"instruction": "a", "output": "b"})]


def test_jsonl_unicode_line_separator_inside_a_string_stays_one_row(tmp_path):
    path = tmp_path / "ls.jsonl"
    lines = [
        json.dumps({"instruction": "one\u2028two", "output": "x"}, ensure_ascii=False),
        json.dumps({"instruction": "three", "output": "y"}),
    ]
    _write_lines(path, lines)

    rows = read_rows(str(path))

    assert [(r.row, r.parse_error) for r in rows] == [(1, None), (2, None)]


# JSON array, CSV, Parquet


def test_json_alpaca_array_rows_numbered_from_one_with_non_objects_kept():
    rows = read_rows(str(FIXTURES / "alpaca.json"))

    assert [r.row for r in rows] == [1, 2, 3, 4]
    assert rows[0].record == {
        "instruction": "Add the two numbers.",
        "input": "2 + 3",
        "output": "5",
        "task": "add",
    }
    assert rows[2].record is None
    assert rows[2].raw == '"not a row"'
    assert rows[2].parse_error == "not a JSON object (got str)"


def test_json_wrapped_in_data_key_is_unwrapped(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [{"instruction": "a", "output": "b"}]}))

    assert read_rows(str(path)) == [RawRow(1, {"instruction": "a", "output": "b"})]


def test_csv_messages_column_and_row_with_too_many_cells():
    rows = read_rows(str(FIXTURES / "chat_rows.csv"))

    assert [r.row for r in rows] == [2, 3, 4]  # file lines: the header is line 1
    assert rows[0].record["task"] == "qa"
    assert json.loads(rows[0].record["messages"])[1] == {"role": "assistant", "content": "Paris."}
    extra = rows[1]
    assert extra.record is None
    assert extra.parse_error == "more cells than header columns (3 for 2)"
    assert json.loads(extra.raw)["_extra"] == ["extra cell"]
    assert "Madrid." in json.loads(extra.raw)["messages"]
    assert rows[2].record == {"task": "qa", "messages": "not json at all"}


def test_parquet_list_of_dicts_messages_become_plain_python(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pd.DataFrame(
        {
            "instruction": [None, "Say hello."],
            "output": [None, "Hello!"],
            "messages": [CHAT, None],
            "task": ["qa", "greet"],
        }
    ).to_parquet(path)

    rows = read_rows(str(path))

    assert [r.row for r in rows] == [1, 2]
    chat, alpaca = rows[0].record, rows[1].record
    assert chat["messages"] == CHAT
    assert type(chat["messages"]) is list and type(chat["messages"][0]) is dict
    assert chat["instruction"] is None and chat["task"] == "qa"
    assert alpaca == {
        "instruction": "Say hello.",
        "output": "Hello!",
        "messages": None,
        "task": "greet",
    }
    json.dumps([r.record for r in rows])  # the rows are JSON-able


def test_parquet_unreadable_or_empty_raises(tmp_path):
    pd = pytest.importorskip("pandas")
    fake = tmp_path / "fake.parquet"
    fake.write_text("this is not parquet")
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"instruction": pd.Series([], dtype=object)}).to_parquet(empty)

    assert "not a readable Parquet file" in _load_error(fake)
    assert "has no rows" in _load_error(empty)
    assert "file not found" in _load_error(tmp_path / "missing.parquet")


# Hugging Face `datasets` (local directory only; tests never reach the hub)


@pytest.fixture
def hf_dir(tmp_path, monkeypatch):
    datasets_config = pytest.importorskip("datasets.config")
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    directory = tmp_path / "local_dataset"
    directory.mkdir()
    _write_lines(
        directory / "train.jsonl",
        [
            json.dumps({"instruction": "a", "output": "b", "task": "t"}),
            json.dumps({"messages": CHAT}),
        ],
    )
    return directory


def test_hf_local_directory_is_auto_detected_and_loaded(hf_dir):
    assert detect_format(str(hf_dir)) == "hf"

    rows = read_rows(str(hf_dir))

    assert [r.row for r in rows] == [1, 2]
    assert rows[0].record["instruction"] == "a" and rows[0].record["messages"] is None
    assert rows[1].record["messages"] == CHAT
    assert rows == read_rows(f"hf:{hf_dir}", "hf")


def test_hf_unknown_split_raises_one_line_error(hf_dir):
    with pytest.raises(DataLoadError) as info:
        read_rows(str(hf_dir), "hf", hf_split="test")

    assert str(hf_dir) in str(info.value)
    assert "'test'" in str(info.value)
    assert "\n" not in str(info.value)


def test_directory_with_file_format_is_rejected(tmp_path):
    assert "is a directory" in _load_error(tmp_path, "jsonl")


# Unusable sources: one line naming the file


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.jsonl", b"", "file is empty"),
        ("blank.jsonl", b"  \n\t\n\n", "file is empty"),
        ("binary.jsonl", b'{"a": 1}\n\x00\x01\x02\xff', "binary data (NUL bytes)"),
        ("latin1.jsonl", b'{"instruction": "caf\xe9", "output": "x"}\n', "not UTF-8"),
        ("notjsonl.jsonl", b"hello\n[1, 2]\n42\n", "no line is a JSON object"),
        ("object.json", b'{"instruction": "a", "output": "b"}', "expected a JSON array"),
        ("emptyarray.json", b"[]", "JSON array is empty"),
        ("broken.json", b'[{"a": 1},', "invalid JSON"),
        ("header.csv", b"instruction,output\n", "header but no rows"),
        ("data.txt", b'{"instruction": "a", "output": "b"}\n', "cannot tell the format"),
    ],
)
def test_unusable_file_raises_one_line_error_naming_it(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)

    message = _load_error(path)

    assert str(path) in message
    assert expected in message


def test_missing_file_raises_file_not_found(tmp_path):
    path = tmp_path / "nope.jsonl"

    message = _load_error(path)

    assert message == f"{path}: file not found"


def test_non_utf8_error_points_at_the_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"x": "caf\xe9"}\n')

    assert "byte 0xe9 at offset 10" in _load_error(path)


@pytest.mark.parametrize("content", [b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n", "\u00a0\n".encode()])
def test_file_with_only_bom_or_unicode_whitespace_is_empty(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)

    assert "file is empty" in _load_error(path)


# The Prefect task: rows survive the hand-off file


def test_load_dataset_task_copies_the_source_into_the_run(tmp_path):
    source = tmp_path / "rows.jsonl"
    shutil.copy(FIXTURES / "bad_rows.jsonl", source)
    ctx = RunContext(run_id="0" * 32, tracking_uri="unused", run_dir=str(tmp_path / "run"))

    loaded = load_dataset.fn(data=DataConfig(path=str(source)), ctx=ctx)
    source.write_text("changed after the run began\n")

    assert loaded == str(tmp_path / "run" / "data" / "source.jsonl")
    assert Path(loaded).read_bytes() == (FIXTURES / "bad_rows.jsonl").read_bytes()


def test_a_datasets_split_is_copied_as_parquet_with_the_same_rows(hf_dir, tmp_path):
    ctx = RunContext(run_id="0" * 32, tracking_uri="unused", run_dir=str(tmp_path / "run"))

    loaded = load_dataset.fn(data=DataConfig(path=str(hf_dir)), ctx=ctx)

    assert loaded.endswith("source.parquet")
    assert read_rows(loaded) == read_rows(str(hf_dir))


def test_a_streamed_datasets_split_is_copied_a_batch_at_a_time_and_validates(tmp_path, monkeypatch):
    from tuneforge.data import reading
    from tuneforge.data.validation import validate_path

    datasets_config = pytest.importorskip("datasets.config")
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(reading, "HF_BATCH", 3)  # several batches, several Parquet writes
    directory = tmp_path / "stream" / "data"
    directory.mkdir(parents=True)
    rows = [{"instruction": f"q{i}", "output": f"a{i}", "task": "t"} for i in range(10)]
    rows[4]["output"] = " "  # a bad row, quarantined from the copy like from any file
    _write_lines(directory / "train-00000.jsonl", [json.dumps(r) for r in rows[:6]])
    _write_lines(directory / "train-00001.jsonl", [json.dumps(r) for r in rows[6:]])
    ctx = RunContext(run_id="0" * 32, tracking_uri="unused", run_dir=str(tmp_path / "run"))
    data = DataConfig(path=str(tmp_path / "stream"), hf_streaming=True)

    loaded = load_dataset.fn(data=data, ctx=ctx)
    report = validate_path(loaded, 100, tmp_path / "v.jsonl", tmp_path / "q.jsonl")

    assert [r.record for r in read_rows(loaded)] == rows
    assert (report.total, report.valid) == (10, 9)
    assert not list(tmp_path.glob("hf-cache/**/*.arrow"))  # streamed: nothing cached whole


def test_a_missing_source_fails_the_load_in_one_line(tmp_path):
    ctx = RunContext(run_id="0" * 32, tracking_uri="unused", run_dir=str(tmp_path / "run"))

    with pytest.raises(DataLoadError, match=r"nowhere\.jsonl: file not found$"):
        load_dataset.fn(data=DataConfig(path=str(tmp_path / "nowhere.jsonl")), ctx=ctx)


def test_csv_empty_cells_are_missing_values(tmp_path):
    from tuneforge.data.validation import validate_rows

    path = tmp_path / "rows.csv"
    path.write_text("instruction,input,output,task\nAdd.,1 + 1,2,\nSay hi.,,,greet\n", "utf-8")
    rows = read_rows(str(path))
    assert rows[0].record["task"] is None and rows[1].record["output"] is None
    valid, rejected = validate_rows(rows, max_chars=100)
    assert [v["task"] for v in valid] == [None]
    assert [(r["row"], r["reason"]) for r in rejected] == [(3, "output is missing")]


def test_csv_rows_are_numbered_by_their_first_file_line(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('instruction,output\n"two\nlines",a\nq,b\n', encoding="utf-8")
    assert [r.row for r in read_rows(str(path))] == [2, 4]


def test_csv_unterminated_quote_is_unusable_and_names_the_line(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('instruction,output\nq,a\nQ,"R\n', encoding="utf-8")
    with pytest.raises(DataLoadError, match=r"broken\.csv: line \d+: malformed CSV"):
        read_rows(str(path))


def test_nul_bytes_anywhere_make_a_file_unusable(tmp_path):
    path = tmp_path / "late-nul.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n' * 500 + b"\x00")
    with pytest.raises(DataLoadError, match="binary data"):
        read_rows(str(path))


def test_save_to_disk_directories_load(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "dict")
    )
    for name in ("single", "dict"):
        loaded = read_rows(str(tmp_path / name))
        assert [r.record for r in loaded] == rows and [r.row for r in loaded] == [1, 2]


# Strict JSON and encodings


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": -Infinity}', "-Infinity is not JSON"),
        ('{"a": ' + "1" * 5000 + "}", "Exceeds the limit (4300 digits)"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ("[" * 100_000, "nested deeper than 64 levels"),
        ('{"a": 1', "invalid JSON: Expecting ',' delimiter at column 8"),
    ],
)
def test_parse_json_is_strict_and_errors_are_one_line(text, phrase):
    with pytest.raises(ValueError) as info:
        parse_json(text)
    assert phrase in str(info.value) and "\n" not in str(info.value)
    assert "set_int_max_str_digits" not in str(info.value)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-be"])
def test_utf16_and_utf32_with_a_byte_order_mark_are_decoded(tmp_path, encoding):
    import codecs

    path = tmp_path / "wide.jsonl"
    bom = codecs.BOM_UTF16_BE if encoding == "utf-16-be" else b""
    path.write_bytes(bom + '{"instruction": "café", "output": "b"}\n'.encode(encoding))

    assert read_rows(str(path)) == [RawRow(1, {"instruction": "café", "output": "b"})]


def test_csv_repeated_header_is_unusable_and_short_rows_are_quarantined(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output,task\nq,a,t\nq2,a2\n", encoding="utf-8")
    rows = read_rows(str(path))
    assert rows[1].record is None and rows[1].parse_error.startswith("fewer cells")
    assert json.loads(rows[1].raw) == {"instruction": "q2", "output": "a2"}
    path.write_text("instruction,output,output\nq,a,b\n", encoding="utf-8")
    assert "repeats column 'output'" in _load_error(path)
