"""`tuneforge.plugins.testing.check_strategy`: passes a correct strategy, catches each kind of
broken one.

Each broken strategy below differs from `full` by one realistic mistake, so every failure is
attributable to the check that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from tuneforge.plugins import (
    IGNORE_INDEX,
    Capabilities,
    Example,
    TuningStrategy,
    tokenize_prompt_response,
    tokenize_prompt_responses,
)
from tuneforge.plugins.full import FullStrategy
from tuneforge.plugins.strategy import with_defaults
from tuneforge.plugins.testing import check_strategy


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _NormsOnly:
    """A correct strategy that trains only the final norm: the base the broken ones vary."""

    name: ClassVar[str] = "norms-only"
    description: ClassVar[str] = "Only the final normalization weight trains."
    Settings: ClassVar[type[BaseModel]] = _Settings

    def __init__(self, settings: BaseModel) -> None:
        self.settings = settings

    def prepare_model(self, model: Any) -> Any:
        model.requires_grad_(False)
        model.model.norm.weight.requires_grad_(True)
        return model

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=False)

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


class _FreezesEverything(_NormsOnly):
    def prepare_model(self, model: Any) -> Any:
        model.requires_grad_(False)
        return model


class _TouchesFrozenWeights(_NormsOnly):
    """Rescales the frozen embedding on every forward pass: state leaking into frozen weights."""

    def prepare_model(self, model: Any) -> Any:
        model = super().prepare_model(model)

        def rescale(module: Any, args: Any) -> None:
            with torch.no_grad():
                module.weight.mul_(1.001)

        model.get_input_embeddings().register_forward_pre_hook(rescale)
        return model


class _TrainsNoToken(_NormsOnly):
    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        example = super().build_example(record, tokenizer, max_length)
        return Example(example.input_ids, [IGNORE_INDEX] * len(example.labels))


class _NeverTrainsTheEnd(_NormsOnly):
    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        example = super().build_example(record, tokenizer, max_length)
        return Example(example.input_ids, [*example.labels[:-1], IGNORE_INDEX])


class _ShiftsLabelsItself(_NormsOnly):
    """Shifts labels by one as if the model did not: every trained token is off by one."""

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        example = super().build_example(record, tokenizer, max_length)
        return Example(example.input_ids, [*example.labels[1:], IGNORE_INDEX])


class _BatchesDiffer(_NormsOnly):
    """Builds its batches with loss on the prompt too, unlike its one-record examples."""

    def build_examples(
        self, records: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> list[Example]:
        return tokenize_prompt_responses(records, tokenizer, max_length, train_prompt=True)


class _LooseSettings(BaseModel):
    model_config = ConfigDict(extra="allow")


class _AllowsUnknownSettings(_NormsOnly):
    Settings: ClassVar[type[BaseModel]] = _LooseSettings


class _SavesPickle(_NormsOnly):
    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        super().save(model, tokenizer, out_dir)
        torch.save(model.state_dict(), out_dir / "pytorch_model.bin")


class _SavesTheUntrainedBase(_NormsOnly):
    """Saves a copy of the checkpoint it started from instead of the trained model."""

    def prepare_model(self, model: Any) -> Any:
        self.base_dir = model.name_or_path
        return super().prepare_model(model)

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        from tuneforge.models import load_pretrained

        base, _ = load_pretrained(self.base_dir)
        base.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


@pytest.fixture(scope="module")
def records(bundled_records: list[dict]) -> list[dict]:
    return bundled_records[:48]


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("full", {}),
        ("instruction", {}),
        ("instruction", {"train_top_layers": 1}),
        ("lora", {}),
        ("lora", {"quantize_4bit": True}),  # load_options: the base loads in 4 bits
        ("pretrain", {}),
    ],
    ids=lambda value: value if isinstance(value, str) else ",".join(value) or "defaults",
)
def test_every_builtin_strategy_passes(tiny_model_dir, records, name, settings):
    """Found through the entry points, as the loop finds them; each ability it declares is
    exercised (pretrain trains raw text alone, packed; full and lora both kinds)."""
    from tuneforge.plugins.discovery import strategy_info

    cls = strategy_info(name).cls
    assert cls.__module__ == f"tuneforge.plugins.{name}"  # the built-in, not an adaptation
    check_strategy(cls, tiny_model_dir, records, settings)


def test_capabilities_say_what_data_a_strategy_trains():
    from tuneforge.plugins.discovery import strategy_info

    names = ("full", "pretrain", "dpo", "simpo", "kto")
    declared = {name: strategy_info(name).cls.capabilities for name in names}
    assert declared["full"] == Capabilities(chat=True, text=True)
    assert declared["pretrain"] == Capabilities(chat=False, text=True, packs_text=True)
    assert declared["dpo"] == declared["simpo"] == Capabilities(chat=False, pairs=True)
    assert declared["kto"] == Capabilities(chat=False, feedback=True)
    assert declared["dpo"].preference and not declared["full"].preference
    with pytest.raises(ValueError, match="packs_text=True\\) needs text=True"):
        Capabilities(packs_text=True)
    with pytest.raises(ValueError, match="chat records, raw text, preference pairs or feedback"):
        Capabilities(chat=False)
    with pytest.raises(ValueError, match=r"a preference strategy .* trains nothing else"):
        Capabilities(pairs=True)  # chat too, by default


def test_a_strategy_written_before_capabilities_gets_the_documented_defaults():
    """`_NormsOnly` defines neither capabilities nor load_options, as plugins written against
    the first contract do: the loader gives it the Protocol's defaults, nothing else changes."""
    adapted = with_defaults(_NormsOnly)
    assert adapted is not _NormsOnly and issubclass(adapted, _NormsOnly)
    assert adapted.__name__ == "_NormsOnly" and adapted.capabilities == Capabilities()
    strategy = adapted(_Settings())
    assert isinstance(strategy, TuningStrategy) and strategy.load_options("float32") == {}
    assert with_defaults(FullStrategy) is FullStrategy


class _LegacyTextOnly(_NormsOnly):
    """Says what it trains the way the first contract had it: class attributes."""

    trains_text: ClassVar[bool] = True
    trains_chat: ClassVar[bool] = False


def test_the_old_ability_attributes_still_count_with_a_deprecation_warning(tiny_model_dir, records):
    with pytest.warns(DeprecationWarning, match="trains_chat, trains_text are deprecated"):
        adapted = with_defaults(_LegacyTextOnly)
    assert adapted.capabilities == Capabilities(chat=False, text=True)
    # ... and check_strategy exercises them: raw text only (chat records given are left out).
    with pytest.warns(DeprecationWarning):
        check_strategy(_LegacyTextOnly, tiny_model_dir, records, max_length=96)


class _EagerAttention(_NormsOnly):
    """Loads its base through load_options, and relies on it in prepare_model."""

    capabilities: ClassVar[Capabilities] = Capabilities()

    def load_options(self, dtype: str) -> dict[str, Any]:
        return {"attn_implementation": "eager"}

    def prepare_model(self, model: Any) -> Any:
        assert model.config._attn_implementation == "eager", "loaded without load_options"
        return super().prepare_model(model)


def test_the_base_is_loaded_with_the_strategys_load_options(tiny_model_dir, records):
    check_strategy(_EagerAttention, tiny_model_dir, records)


class _BadLoadOptions(_NormsOnly):
    capabilities: ClassVar[Capabilities] = Capabilities()

    def load_options(self, dtype: str) -> Any:
        return [("attn_implementation", "eager")]


class _TextOnlyFreezesTheHead(_NormsOnly):
    """Says it trains raw text, but leaves trainable only a parameter the model never uses:
    the text batch's loss reaches nothing that trains."""

    capabilities: ClassVar[Capabilities] = Capabilities(chat=False, text=True)

    def prepare_model(self, model: Any) -> Any:
        model.requires_grad_(False)
        extra = torch.nn.Parameter(torch.zeros(1))
        model.register_parameter("unused", extra)
        return model


class _BadCapabilities(_NormsOnly):
    capabilities: ClassVar[Any] = {"text": True}


def test_a_correct_partial_strategy_passes(tiny_model_dir, records):
    check_strategy(_NormsOnly, tiny_model_dir, records, max_length=96)


@pytest.mark.parametrize(
    ("strategy_cls", "message"),
    [
        (_FreezesEverything, "left no parameter trainable"),
        (_TouchesFrozenWeights, "frozen parameters .* changed .*embed_tokens"),
        (_TrainsNoToken, "no trained token"),
        (_NeverTrainsTheEnd, "does not end with a trained end-of-sequence token"),
        (_ShiftsLabelsItself, "labels differ from input_ids"),
        (_BatchesDiffer, "build_examples differs from build_example record by record"),
        (_AllowsUnknownSettings, "accepts unknown keys"),
        (_SavesPickle, r"pickle-based files \['pytorch_model.bin'\]"),
        (_SavesTheUntrainedBase, "does not reproduce the trained one"),
        (_BadLoadOptions, "load_options returned list, not a dict"),
        (_TextOnlyFreezesTheHead, "on raw text: the loss does not depend on any trainable"),
        (_BadCapabilities, "capabilities must be a tuneforge.plugins.Capabilities"),
    ],
    ids=lambda value: value.__name__.strip("_") if isinstance(value, type) else None,
)
def test_broken_strategy_fails_with_a_clear_message(tiny_model_dir, records, strategy_cls, message):
    with pytest.raises(AssertionError, match=message):
        check_strategy(strategy_cls, tiny_model_dir, records)


def test_a_subclass_redefining_build_example_is_not_bypassed_by_its_parents_batches(
    tiny_model_dir, records
):
    from tuneforge.models import load_pretrained
    from tuneforge.plugins.strategy import build_examples

    class ResponseOnly(FullStrategy):  # FullStrategy's build_examples trains the prompt too
        def build_example(self, record, tokenizer, max_length):
            return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=False)

    _, tokenizer = load_pretrained(tiny_model_dir)
    strategy = ResponseOnly(FullStrategy.Settings())
    one_by_one = [strategy.build_example(r, tokenizer, 64) for r in records]
    assert build_examples(strategy, records, tokenizer, 64) == one_by_one
    assert FullStrategy.build_examples(strategy, records, tokenizer, 64) != one_by_one


def test_settings_the_strategy_rejects_fail_the_check(tiny_model_dir, records):
    with pytest.raises(AssertionError, match="rejects settings"):
        check_strategy(FullStrategy, tiny_model_dir, records, settings={"gradient_checkpoint": 1})


def test_truncated_examples_need_not_end_with_the_end_of_sequence(tiny_model_dir, records):
    # max_length cuts most responses; what is left must still carry trained tokens.
    check_strategy(FullStrategy, tiny_model_dir, records, max_length=12)
