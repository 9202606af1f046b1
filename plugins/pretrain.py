"""`pretrain` strategy: continued pretraining on raw domain text, the first step of transfer
learning (Axolotl's `completion`, LLaMA-Factory's stage `pt`, torchtune's `text_completion`).

Every weight trains with causal-LM loss on every token of `text` records (data.schema: text).
Documents are cut into `train.max_length` blocks (none is cut short and lost: a long one becomes
several blocks) and the blocks are packed, several to a row of at most `train.max_length`
tokens, so a step trains `batch_size` full rows whatever the documents' lengths. With
padding-free batches (`train.padding_free`, the default where the model qualifies) attention
stays within each document and positions restart at each one; padded batches give each block
its own row, the same loss with more padding. Evaluation is perplexity on the held-back text:
set `registry.metric: perplexity` (or `eval_loss`).

    tuneforge run deployments/presets/tiny-cpu-pretrain.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from tuneforge.plugins import Capabilities, Example, TuningStrategy


class PretrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PretrainStrategy(TuningStrategy):
    name: ClassVar[str] = "pretrain"
    description: ClassVar[str] = (
        "Continued pretraining: all weights, loss on every token of raw text, packed rows."
    )
    Settings: ClassVar[type[BaseModel]] = PretrainSettings
    # Raw text only, its blocks packed into max_length rows; prompt/response records: use
    # full or instruction.
    capabilities: ClassVar[Capabilities] = Capabilities(chat=False, text=True, packs_text=True)

    def __init__(self, settings: PretrainSettings) -> None:
        self.settings = settings

    def prepare_model(self, model: Any) -> Any:
        model.requires_grad_(True)
        return model

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        raise ValueError(
            f"row {record.get('row')}: pretrain trains on raw text (data.schema: text), and this "
            "is a prompt/response record; use full or instruction for those"
        )

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
