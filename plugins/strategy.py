"""The contract every tuning strategy fulfils, built-in or third-party.

A strategy is a class registered under the `tuneforge.strategies` entry-point group:

    [project.entry-points.'tuneforge.strategies']
    bitfit = "my_package.bitfit:BitFitStrategy"

The training engine (`tuneforge.training`) owns the optimizer, batching, logging and
checkpoints; a strategy only says what is specific to it. The whole contract is the
`TuningStrategy` Protocol below: three required class attributes and three required methods,
plus three optional members with documented defaults (`capabilities`, `load_options`,
`build_examples`). Subclass it to inherit those defaults and let a type checker check the rest:

    class BitFitStrategy(TuningStrategy):
        name = "bitfit"
        ...

It is a contract, not a vehicle for code reuse: share code through free functions
(`tuneforge.plugins.tokenization`), not by subclassing another strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from tuneforge.batching import Example


@dataclass(frozen=True)
class Capabilities:
    """What data a strategy trains on; the training loop, the config check and
    `check_strategy` read it, nothing else.

    Attributes:
        chat: trains prompt/response records (every schema but text) through `build_example`.
            False: such data is refused before any model is built (`pretrain`).
        text: trains raw text (data.schema: text). The loop tokenizes it itself, each document
            cut into `train.max_length` blocks with every token trained (`tokenize_text_blocks`);
            `build_example` is never called for it.
        packs_text: packs those blocks several to a row of `train.max_length` tokens, so a step
            trains `batch_size` full rows whatever the documents' lengths (needs `text`).
        pairs: trains preference pairs (data.schema: preference): a `PreferenceStrategy`
            (`tuneforge.plugins.preference`) whose loss compares the chosen answer with the
            rejected one.
        feedback: trains unpaired good/bad feedback (data.schema: feedback): a
            `PreferenceStrategy` whose loss reads each answer's label.
    """

    chat: bool = True
    text: bool = False
    packs_text: bool = False
    pairs: bool = False
    feedback: bool = False

    def __post_init__(self) -> None:
        if self.packs_text and not self.text:
            raise ValueError("Capabilities(packs_text=True) needs text=True: only raw text packs")
        if not (self.chat or self.text or self.pairs or self.feedback):
            raise ValueError(
                "Capabilities: a strategy trains chat records, raw text, preference pairs or "
                "feedback"
            )
        if (self.pairs or self.feedback) and (self.chat or self.text):
            raise ValueError(
                "Capabilities: a preference strategy (pairs, feedback) trains nothing else: "
                "its loss needs what the other data has not"
            )

    @property
    def preference(self) -> bool:
        """Whether the strategy learns from preferences (pairs or feedback)."""
        return self.pairs or self.feedback


@runtime_checkable
class TuningStrategy(Protocol):
    """What a tuning strategy provides. Instances are built as `Strategy(settings)`."""

    name: ClassVar[str]
    description: ClassVar[str]
    # The strategy's own pydantic settings model; `train.settings` in the run config is
    # validated against it before any model is built. Use `extra="forbid"`.
    Settings: ClassVar[type[BaseModel]]
    # Optional: what data it trains on. Default: prompt/response records only.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def load_options(self, dtype: str) -> dict[str, Any]:
        """Optional: extra `from_pretrained` options for the base, which the loop loads with
        them (in `model.dtype`, `dtype`) before `prepare_model`; e.g. a `BitsAndBytesConfig`
        as `quantization_config` (the lora strategy's QLoRA). Default: none."""
        return {}

    def prepare_model(self, model: Any) -> Any:
        """Returns the model to train: sets `requires_grad` on the parameters that train (the
        training loop optimizes exactly those), or wraps the model (e.g. with adapters)."""
        ...

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        """Tokenizes one validated record (`{"row", "task", "messages"}`) into an `Example`."""
        ...

    def build_examples(
        self, records: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> list[Example]:
        """Optional: `build_example` of each record, the same examples, built together where
        that is faster (one tokenizer call for a batch: `tokenize_prompt_responses`). The loop
        calls it on batches of records. Default: one `build_example` after another."""
        return [self.build_example(r, tokenizer, max_length) for r in records]

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        """Writes what gets registered (weights as safetensors, tokenizer, config) to `out_dir`."""
        ...


OPTIONAL_MEMBERS = ("capabilities", "load_options", "build_examples")
# How strategies said what data they train on before `capabilities` (tuneforge 0.1): class
# attributes, still honoured (with a DeprecationWarning) for a class that declares no
# capabilities.
LEGACY_ABILITIES = {"trains_chat": "chat", "trains_text": "text", "packs_text": "packs_text"}


def with_defaults(cls: type) -> type:
    """`cls`, with the documented defaults of the optional members it does not define: the
    one place they are filled in, for the plugin loader and `check_strategy` alike.

    A class that subclasses `TuningStrategy` has them already; one written against the
    contract before the optional members joined it gets a subclass of itself and
    `TuningStrategy` (same name and module), which inherits them. Its old ability attributes
    (`trains_text = True`, ...) become its `capabilities`, with a DeprecationWarning. Anything
    else is returned as it is, for the conformance check to judge."""
    if not isinstance(cls, type) or TuningStrategy in cls.__mro__:
        return cls
    if all(hasattr(cls, member) for member in OPTIONAL_MEMBERS):
        return cls
    names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    legacy = {new: getattr(cls, old) for old, new in LEGACY_ABILITIES.items() if hasattr(cls, old)}
    if legacy and not hasattr(cls, "capabilities"):
        import warnings

        said = ", ".join(f"{old}" for old in LEGACY_ABILITIES if hasattr(cls, old))
        warnings.warn(
            f"{cls.__qualname__}: {said} are deprecated; declare capabilities: "
            f"ClassVar[Capabilities] = Capabilities(...) instead",
            DeprecationWarning,
            stacklevel=2,
        )
        names["capabilities"] = Capabilities(**legacy)
    return type(cls.__name__, (cls, TuningStrategy), names)


def build_examples(
    strategy: TuningStrategy, records: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> list[Example]:
    """The examples of `records` as the loop builds them: with the strategy's `build_examples`,
    unless a subclass redefined `build_example` below the class that defined `build_examples`
    (which then knows nothing of the new one): then one `build_example` after another."""
    mro = type(strategy).__mro__

    def definer(member: str) -> int:
        return next((i for i, cls in enumerate(mro) if member in vars(cls)), len(mro))

    if definer("build_examples") <= definer("build_example"):
        return strategy.build_examples(records, tokenizer, max_length)
    return [strategy.build_example(r, tokenizer, max_length) for r in records]
