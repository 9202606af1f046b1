"""JSON Lines reading: orjson where it can, `json` where it cannot, one result either way."""

from __future__ import annotations

import gc
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.jsonl import gc_paused, loads, read_jsonl, write_jsonl
from tuneforge.training.checkpoint import records_digest

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_every_document_reads_as_json_reads_it(value):
    line = json.dumps(value, ensure_ascii=False).encode()
    assert loads(line) == json.loads(line)


def test_what_orjson_refuses_is_read_by_json():
    # NaN and Infinity, a lone surrogate: json reads them, orjson not; integers past 64 bits
    # orjson reads as floats.
    lines = [b'{"x": NaN}', b'{"x": 1e400}', b'{"x": "\\ud800"}', b"[18446744073709551616]"]
    lines += [b'{"x": 123456789012345678901234567890}', b"-9223372036854775809"]
    for line in lines:
        assert repr(loads(line)) == repr(json.loads(line))


def test_a_file_reads_back_as_written_blank_lines_skipped(tmp_path):
    rows = [{"row": 1, "text": "é ✓ \u2028 line"}, {"row": 2, "n": 2**70}, {"row": 3, "x": None}]
    write_jsonl(rows, tmp_path / "a.jsonl")
    with (tmp_path / "a.jsonl").open("a") as f:
        f.write("\n  \n")
    assert read_jsonl(tmp_path / "a.jsonl") == rows


def test_the_records_digest_is_the_one_every_earlier_version_computed():
    import hashlib

    def earlier(records):  # tuneforge before the digest was streamed: checkpoints carry it
        return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]

    records = [
        {"row": i, "messages": [{"role": "user", "content": f"é {i}"}]} for i in range(25001)
    ]
    for some in (records, records[:20_000], records[:1], [], [{"x": float("nan")}]):
        assert records_digest(some) == records_digest(iter(some)) == earlier(some)
    assert records_digest([{"x": float("nan")}]) != records_digest([{"x": None}])


def test_the_records_digest_sees_content_and_survives_big_integers():
    a = [{"row": 1, "messages": [{"role": "user", "content": "hi"}]}]
    b = [{"row": 1, "messages": [{"role": "user", "content": "hi!"}]}]
    assert records_digest(a) == records_digest([dict(reversed(list(a[0].items())))])
    assert records_digest(a) != records_digest(b)
    assert records_digest([{"n": 2**70}]) != records_digest([{"n": 2**70 + 1}])


def test_the_collector_is_paused_only_inside_the_block():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
