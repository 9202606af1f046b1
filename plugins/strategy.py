"""The contract every tuning strategy fulfils, built-in or third-party.

A strategy is a class registered under the `tuneforge.strategies` entry-point group:

    [project.entry-points.'tuneforge.strategies']
    bitfit = "my_package.bitfit:BitFitStrategy"

The generic training loop (`tuneforge.tasks.train`) owns the optimizer, batching, logging and
checkpoints; a strategy only says what is specific to it. This Protocol is a contract, not a
vehicle for code reuse: share code through free functions (`tuneforge.plugins.tokenization`), not by
subclassing another strategy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from tuneforge.batching import Example


@runtime_checkable
class TuningStrategy(Protocol):
    """What a tuning strategy provides. Instances are built as `Strategy(settings)`."""

    name: ClassVar[str]
    description: ClassVar[str]
    # The strategy's own pydantic settings model; `train.settings` in the run config is
    # validated against it before any model is built. Use `extra="forbid"`.
    Settings: ClassVar[type[BaseModel]]
    # Optional, not part of the Protocol's checked members: `trains_text: ClassVar[bool] =
    # True` says the strategy trains on raw text (data.schema: text), which the loop then
    # tokenizes itself in blocks (`tokenize_text_blocks`); without it such data is refused.
    # `packs_text: ClassVar[bool] = True` packs those blocks into rows of `train.max_length`
    # tokens, so a batch is `batch_size` full rows (`pretrain`). `trains_chat: ClassVar[bool]
    # = False` refuses prompt/response records (then `build_example` is never called).
    # Optional too: `load_options(self, dtype: str) -> dict` returns extra `from_pretrained`
    # options for the base (e.g. a `BitsAndBytesConfig` as `quantization_config`: the lora
    # strategy's QLoRA); the loop loads the base with them before `prepare_model`.

    def prepare_model(self, model: Any) -> Any:
        """Returns the model to train: sets `requires_grad` on the parameters that train (the
        training loop optimizes exactly those), or wraps the model (e.g. with adapters)."""
        ...

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        """Tokenizes one validated record (`{"row", "task", "messages"}`) into an `Example`."""
        ...

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        """Writes what gets registered (weights as safetensors, tokenizer, config) to `out_dir`."""
        ...
