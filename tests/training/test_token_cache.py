"""The token cache (tuneforge/training/token_cache.py): a second run on the same records,
tokenizer and settings reuses the memory-mapped examples and trains exactly as the first; a
change to any of them builds the examples again; a half-written entry is never read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config import TrainConfig
from tuneforge.jsonl import JsonlRecords, write_jsonl
from tuneforge.plugins.strategy import build_examples
from tuneforge.plugins.testing import tiny_checkpoint
from tuneforge.training import token_cache
from tuneforge.training.loop import train_model


def _cfg(**changes) -> TrainConfig:
    settings = {"strategy": "instruction", "steps": 4, "batch_size": 8, "max_length": 96}
    return TrainConfig(**(settings | {"num_threads": 2} | changes))


def _entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def records(bundled_records):
    return bundled_records[:120]


def test_a_second_run_reuses_the_examples_and_trains_the_same(tiny_model_dir, records, tmp_path):
    cache = tmp_path / "cache"
    plain = train_model(tiny_model_dir, records, _cfg(), tmp_path / "plain")
    first = train_model(tiny_model_dir, records, _cfg(), tmp_path / "a", token_cache_dir=cache)
    second = train_model(tiny_model_dir, records, _cfg(), tmp_path / "b", token_cache_dir=cache)

    assert (plain.token_cache, first.token_cache, second.token_cache) == ("off", "built", "reused")
    for result in (first, second):  # the same examples, batches and steps as without a cache
        assert result.final_loss == plain.final_loss
        assert (result.real_tokens, result.trained_tokens) == (
            plain.real_tokens,
            plain.trained_tokens,
        )
        assert result.audit == plain.audit
    (entry,) = _entries(cache)
    examples = token_cache.ArrowExamples(cache / entry / token_cache.FILE)
    assert len(examples) == len(records)
    # Read from the file through a memory map, not loaded whole.
    assert examples.dataset.cache_files[0]["filename"].endswith(token_cache.FILE)


@pytest.mark.parametrize(
    "change",
    ["records", "max_length", "template", "tokenizer"],
)
def test_a_change_to_what_shapes_the_examples_builds_them_again(
    tiny_model_dir, records, tmp_path, change
):
    cache = tmp_path / "cache"
    train_model(tiny_model_dir, records, _cfg(), tmp_path / "a", token_cache_dir=cache)
    base, data, cfg = tiny_model_dir, records, _cfg()
    if change == "records":
        edited = dict(
            data[0], messages=[*data[0]["messages"][:-1], {"role": "assistant", "content": "x"}]
        )
        data = [edited, *data[1:]]
    elif change == "max_length":
        cfg = _cfg(max_length=80)
    elif change == "template":
        cfg = _cfg(settings={"templates": ["Please: {prompt}"]})
    else:  # another tokenizer (trained on other rows), the same model shape
        base = tiny_checkpoint(tmp_path / "other", records[60:])

    again = train_model(base, data, cfg, tmp_path / "b", token_cache_dir=cache)

    assert again.token_cache == "built"
    assert len(_entries(cache)) == 2


def test_a_half_written_entry_is_not_read(tiny_model_dir, records, tmp_path):
    cache = tmp_path / "cache"
    train_model(tiny_model_dir, records, _cfg(), tmp_path / "a", token_cache_dir=cache)
    (entry,) = _entries(cache)
    (cache / entry / token_cache.META).unlink()  # as if the writer died before finishing

    again = train_model(tiny_model_dir, records, _cfg(), tmp_path / "b", token_cache_dir=cache)

    assert again.token_cache == "built"


class _CountedFile:
    """A split file's records as the flow hands them to training (`JsonlRecords`), counting
    how many the current pass over them has read."""

    def __init__(self, path: Path) -> None:
        self.records, self.read = JsonlRecords(path), 0

    def __iter__(self):
        self.read = 0
        for record in self.records:
            self.read += 1
            yield record


def test_records_from_a_file_are_tokenized_a_batch_at_a_time_into_the_same_entry(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    from tuneforge.training import loop

    cache = tmp_path / "cache"
    listed = train_model(tiny_model_dir, records, _cfg(), tmp_path / "a")
    write_jsonl(records, tmp_path / "train.jsonl")
    source = _CountedFile(tmp_path / "train.jsonl")
    read_when_built: list[tuple[int, int]] = []

    def counted(strategy, batch, tokenizer, max_length):
        read_when_built.append((len(batch), source.read))
        return build_examples(strategy, batch, tokenizer, max_length)

    monkeypatch.setattr(loop, "BUILD_BATCH", 16)
    monkeypatch.setattr(loop, "build_examples", counted)
    streamed = train_model(tiny_model_dir, source, _cfg(), tmp_path / "b", token_cache_dir=cache)

    # Each batch was tokenized when the file had been read only that far (one record ahead).
    built = 0
    for size, read in read_when_built:
        built += size
        assert built <= read <= built + 1
    assert [size for size, _ in read_when_built] == [16] * 7 + [8]
    assert streamed.final_loss == listed.final_loss and streamed.audit == listed.audit
    # The list and the file of the same records share one cache entry.
    again = train_model(tiny_model_dir, records, _cfg(), tmp_path / "c", token_cache_dir=cache)
    assert again.token_cache == "reused" and len(_entries(cache)) == 1


def test_a_one_pass_iterator_of_records_trains_as_their_list(tiny_model_dir, records, tmp_path):
    listed = train_model(tiny_model_dir, records, _cfg(), tmp_path / "a")
    once = train_model(tiny_model_dir, iter(records), _cfg(), tmp_path / "b")
    assert (once.final_loss, once.audit) == (listed.final_loss, listed.audit)


def test_a_broken_line_in_the_records_file_is_not_blamed_on_the_strategy(
    tiny_model_dir, records, tmp_path
):
    from tuneforge.training.loop import StrategyError

    write_jsonl(records, tmp_path / "train.jsonl")
    with (tmp_path / "train.jsonl").open("a") as f:
        f.write('{"row": 999, "messages": [\n')  # cut off, as by a full disk
    source = JsonlRecords(tmp_path / "train.jsonl")
    with pytest.raises(ValueError, match="Expecting value") as raised:
        train_model(tiny_model_dir, source, _cfg(), tmp_path / "a", token_cache_dir=tmp_path / "c")
    assert not isinstance(raised.value, StrategyError)
