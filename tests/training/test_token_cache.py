"""The token cache (tuneforge/training/token_cache.py): a second run on the same records,
tokenizer and settings reuses the memory-mapped examples and trains exactly as the first; a
change to any of them builds the examples again; a half-written entry is never read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config import TrainConfig
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
