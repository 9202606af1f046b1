"""The contract of a preference strategy (`dpo`, `simpo`, `kto`, and plugins like them), and
what the training loop and evaluation share with it.

A preference strategy learns from which answer is better, not from one answer to imitate. Its
data is preference pairs (`capabilities.pairs`, data.schema: preference: a prompt, a chosen and
a rejected answer) or unpaired feedback (`capabilities.feedback`, data.schema: feedback: a
prompt, an answer and a true/false label). The training loop owns the batches, the forward
passes and the reference model; the strategy says how the answers' log-probabilities become a
loss:

    class MyPreferenceStrategy(PreferenceStrategy):
        name = "mypo"
        description = "..."
        Settings = MySettings            # a subclass of PreferenceSettings (beta, lora)
        needs_reference = True           # False: no reference model at all (SimPO-style)

        def loss(self, logps: PreferenceLogps) -> torch.Tensor:
            ...                          # one loss per unit; the loop takes the mean

Every unit of a batch is two answers to one prompt: a pair's chosen and rejected answers, or a
feedback row's rated answer and another row's answer to its prompt (a mismatched completion,
for the KL estimate KTO needs). Both are tokenized like instruction data (`build_example`,
loss on the answer only, end of turn trained) and laid out padding-free in one row.

The reference model is what the loss measures the trained model against. With LoRA
(`train.settings.lora`) it is the base with the adapters switched off (no second copy in
memory); with full weights its log-probabilities are computed once, before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.batching import IGNORE_INDEX, Example
from tuneforge.plugins.adapters import LoraSettings, add_lora, qlora_load_options, save_adapter
from tuneforge.plugins.strategy import Capabilities, TuningStrategy
from tuneforge.plugins.tokenization import tokenize_prompt_response

if TYPE_CHECKING:
    import torch

__all__ = [
    "Capabilities",
    "PreferenceLogps",
    "PreferenceSettings",
    "PreferenceStrategy",
    "completion_logps",
    "mismatched",
    "rejected_record",
]


class PreferenceSettings(BaseModel):
    """What every preference strategy's settings have (subclass it for more)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(
        0.1,
        gt=0,
        description=(
            "How far the tuned model may move from the reference: the implicit reward is "
            "beta x log(policy / reference). Small (0.05-0.1): large moves allowed, more "
            "learned, more forgotten; large (0.5+): stays close to the reference."
        ),
    )
    lora: LoraSettings | None = Field(
        None,
        description=(
            "Train LoRA adapters on a frozen base ({rank, alpha, ...}, QLoRA with "
            "quantize_4bit) instead of every weight; the reference is then the base with the "
            "adapters off, at no extra memory. null: full weights, the reference's "
            "log-probabilities computed once before training."
        ),
    )


@dataclass(frozen=True)
class PreferenceLogps:
    """A batch's log-probabilities, one row per unit (pair or feedback row), two columns.

    Attributes:
        policy: `(units, 2)` summed log-probabilities of each answer's tokens under the model
            being trained (with gradients). Pairs: column 0 the chosen answer, 1 the rejected;
            feedback: column 0 the rated answer, 1 a mismatched answer to the same prompt.
        reference: the same under the reference model (no gradients); None for a strategy
            that needs no reference (`needs_reference = False`).
        tokens: `(units, 2)` how many answer tokens each sum has (for length-normalised
            losses: divide `policy` by it).
        label: `(units,)` booleans for feedback (True: a good answer); None for pairs.
    """

    policy: torch.Tensor
    reference: torch.Tensor | None
    tokens: torch.Tensor
    label: torch.Tensor | None = None

    @property
    def logratios(self) -> torch.Tensor:
        """`policy - reference`: the implicit reward per answer, before beta."""
        if self.reference is None:
            raise ValueError("this strategy has no reference model: no log-ratios")
        return self.policy - self.reference


class PreferenceStrategy(TuningStrategy, Protocol):
    """A tuning strategy whose loss compares answers (`capabilities.pairs` or `.feedback`).

    On top of `TuningStrategy`: `needs_reference` and `loss`. The rest has defaults here that
    read `settings.lora` (a `PreferenceSettings`): full weights or LoRA/QLoRA adapters, the
    answer tokenized with loss on it only, saved as a checkpoint or an adapter."""

    capabilities: ClassVar[Capabilities] = Capabilities(chat=False, pairs=True)
    # False: the loss reads `logps.policy` only, and no reference is computed (SimPO).
    needs_reference: ClassVar[bool] = True
    settings: PreferenceSettings

    def loss(self, logps: PreferenceLogps) -> torch.Tensor:
        """The loss of each unit, `(units,)`; the loop minimises their mean."""
        ...

    def load_options(self, dtype: str) -> dict[str, Any]:
        lora = self.settings.lora
        return qlora_load_options(lora, dtype) if lora else {}

    def prepare_model(self, model: Any) -> Any:
        lora = self.settings.lora
        return add_lora(model, lora) if lora else model.requires_grad_(True)

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=False)

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        if self.settings.lora:
            save_adapter(model, tokenizer, out_dir, self.settings.lora)
        else:
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)


def rejected_record(record: dict[str, Any]) -> dict[str, Any]:
    """A preference record with its rejected answer in place of the chosen one."""
    answer = {"role": "assistant", "content": record["rejected"]}
    return {**record, "messages": [*record["messages"][:-1], answer]}


def answer_start(example: Example) -> int:
    """Where an example's answer starts: its first trained token."""
    return next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)


def mismatched(prompt: Example, answer: Example, max_length: int) -> Example:
    """`prompt`'s prompt followed by `answer`'s answer (another row's), cut to `max_length`:
    what the model says to an answer it was not asked for (KTO's KL estimate)."""
    head, tail = answer_start(prompt), answer_start(answer)
    ids = [*prompt.input_ids[:head], *answer.input_ids[tail:]][:max_length]
    labels = [*([IGNORE_INDEX] * head), *answer.input_ids[tail:]][:max_length]
    return Example(input_ids=ids, labels=labels)


def completion_logps(model: Any, batch: dict[str, Any], units: int) -> tuple[Any, Any]:
    """Summed log-probabilities of the trained (answer) tokens of each sequence in `batch`, and
    their counts, each `(units, 2)`: sequence 2i and 2i+1 are unit i's two answers.

    `batch` is padded (`tuneforge.batching.collate`: one sequence per row) or padding-free
    (one row, positions restarting at 0 for each sequence; a trailing filler sequence that
    trains nothing is allowed). The output head runs on answer positions only."""
    import torch

    labels = batch["labels"]
    scored = labels[:, 1:] != IGNORE_INDEX
    keep = torch.nn.functional.pad(scored, (0, 1))  # position i predicts token i + 1
    if "tuneforge_slots" in batch:  # a sequence starts where its positions restart
        sequence = (batch["position_ids"] == 0).cumsum(1) - 1
    else:
        sequence = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if _takes_logits_to_keep(model):
        logits = model(**inputs, logits_to_keep=keep).logits
    else:
        logits = model(**inputs).logits[keep]
    logits = logits.reshape(-1, logits.size(-1))
    targets = labels[:, 1:][scored]
    if logits.dtype in (torch.float16, torch.bfloat16):  # the softmax in at least float32
        logits = logits.float()
    token_logps = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    owner = sequence[:, :-1][scored]  # position i's token i + 1 is in position i's sequence
    n = 2 * units
    sums = token_logps.new_zeros(n).index_add(0, owner, token_logps)
    counts = token_logps.new_zeros(n).index_add(0, owner, torch.ones_like(token_logps))
    return sums.view(units, 2), counts.view(units, 2)


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the model (under its adapter wrapper) computes the head on chosen positions."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters
