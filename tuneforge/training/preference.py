"""Preference training in the shared loop: a `PreferenceObjective` turns preference pairs or
feedback rows into units of two examples, holds the reference model's log-probabilities,
and gives each step's loss from the strategy's `loss` (`tuneforge.plugins.preference`).

A unit is two answers to one prompt, tokenized by the strategy's `build_example` (loss on the
answer only): a pair's chosen and rejected answers, or a feedback row's rated answer and a
mismatched one (the prompt with another row's answer, for KTO's KL estimate; fixed for the
run, as TRL builds them once). A step's units are laid out padding-free in one row, chosen and
rejected side by side, and one forward pass scores both.

The reference: with LoRA adapters, the same forward with the adapters switched off, per step
(no second copy of the model); with full weights, every unit's reference log-probabilities
computed once before the first step (from the base, before any checkpoint is resumed), so a
step costs one forward and backward, as an instruction-tuning step does. A strategy without a
reference (SimPO) gets none.

Units whose answer does not fit `train.max_length` are left out of training, each with its
reason, written beside the trained model (`too_long`): a cut-off answer would compare part of
one answer with the whole of another.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch

from tuneforge.batching import Example, audit_examples
from tuneforge.plugins.preference import (
    PreferenceLogps,
    completion_logps,
    mismatched,
    rejected_record,
)
from tuneforge.prompts import end_of_turn_id

Collate = Callable[[list[Example]], dict[str, Any]]
REFERENCE_BATCH = 16  # units per forward pass while precomputing the reference


class PreferenceObjective:
    """Examples, units and the per-step loss of a preference strategy.

    Attributes:
        examples: two per unit, unit i's at 2i and 2i + 1.
        units: `[[2i, 2i + 1], ...]`: what a batch draws (`batch_size` units a step).
        too_long: quarantine entries (`{"row", "reason", "record"}`) of records left out.
        audit: the loss mask of the trained answers (mismatched KL answers not counted).
    """

    def __init__(
        self, strategy: Any, records: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> None:
        self.strategy = strategy
        self.feedback = strategy.capabilities.feedback
        self.max_length = max_length
        self.reference: torch.Tensor | None = None  # (units, 2), precomputed (full weights)
        self.reference_seconds = 0.0
        end = end_of_turn_id(tokenizer)
        build = strategy.build_example
        kept: list[tuple[dict[str, Any], Example, Example | None]] = []
        self.too_long: list[dict[str, Any]] = []
        for record in records:
            first = build(record, tokenizer, max_length)
            second = None
            if not self.feedback:
                second = build(rejected_record(record), tokenizer, max_length)
            cut = [e for e in (first, second) if e is not None and e.labels[-1] != end]
            if cut:
                sides = "answer" if self.feedback else "chosen or rejected answer"
                reason = f"the {sides} does not fit train.max_length={max_length} tokens"
                self.too_long.append({"row": record["row"], "reason": reason, "record": record})
                continue
            kept.append((record, first, second))
        if len(kept) < 2:
            raise ValueError(
                f"{len(kept)} of {len(records)} preference rows fit train.max_length="
                f"{max_length} tokens; raise train.max_length"
            )
        firsts = [first for _, first, _ in kept]
        seconds = [s for _, _, s in kept] if not self.feedback else self._mismatched(firsts)
        self.records = [r for r, _, _ in kept]
        self.examples = [e for pair in zip(firsts, seconds, strict=True) for e in pair]
        self.units = [[2 * i, 2 * i + 1] for i in range(len(kept))]
        trained = firsts if self.feedback else self.examples
        rows = [r["row"] for r in self.records for _ in range(len(trained) // len(kept))]
        self.audit = audit_examples(trained, rows, end, max_length)
        labels = [bool(r["label"]) for r in self.records] if self.feedback else None
        self.labels = torch.tensor(labels) if labels is not None else None

    def _mismatched(self, firsts: list[Example]) -> list[Example]:
        """Each row's prompt with another row's answer: the next one in a fixed shuffle, so
        no row gets its own answer."""
        order = list(range(len(firsts)))
        random.Random(0).shuffle(order)
        other = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
        return [mismatched(e, firsts[other[i]], self.max_length) for i, e in enumerate(firsts)]

    def precompute_reference(self, model: Any, collate: Collate, device: torch.device) -> None:
        """Every unit's reference log-probabilities, from `model` as it is now (the base),
        when the strategy needs a reference and the model has no adapters to switch off."""
        if not self.strategy.needs_reference or hasattr(model, "disable_adapter"):
            return
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        sums = []
        with torch.inference_mode():
            for start in range(0, len(self.units), REFERENCE_BATCH):
                units = range(start, min(start + REFERENCE_BATCH, len(self.units)))
                batch = _on(collate(self._examples(units)), device)
                sums.append(completion_logps(model, batch, len(units))[0].float().cpu())
        model.train(was_training)
        self.reference = torch.cat(sums)
        self.reference_seconds = time.perf_counter() - started

    def _examples(self, units: Any) -> list[Example]:
        return [self.examples[i] for u in units for i in self.units[u]]

    def step_loss(
        self,
        model: Any,
        core: Any,
        units: list[int],
        global_units: int,
        collate: Collate,
        device: torch.device,
        world: int,
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        """The loss to backpropagate for this process's `units` (of `global_units` in the
        global batch), its global mean for logging, and what the step logs beside it: for
        pairs, the policy's own preference accuracy and, with a reference, the implicit
        reward's accuracy and mean margin, over the global batch.

        Under DDP each rank's loss is its units' sum over the global count, times the world
        size: DDP's gradient averaging then gives the gradient of the global mean."""
        batch = _on(collate(self._examples(units)), device)
        policy, tokens = completion_logps(model, batch, len(units))
        reference = None
        if self.strategy.needs_reference:
            if self.reference is not None:
                reference = self.reference[units].to(device)
            else:  # LoRA: the base is the model with its adapters off
                with torch.no_grad(), core.disable_adapter():
                    reference = completion_logps(core, batch, len(units))[0]
        label = self.labels[units].to(device) if self.labels is not None else None
        logps = PreferenceLogps(policy, reference, tokens, label)
        losses = self.strategy.loss(logps)
        detached = torch.is_grad_enabled() and not losses.requires_grad
        if losses.shape != (len(units),) or detached:
            raise ValueError(
                f"loss returned shape {tuple(losses.shape)} for {len(units)} units"
                + (", not depending on the trained weights" if detached else "")
            )
        local = losses.sum()
        stats = self._stats(logps)
        sums = torch.stack([local.detach().float(), *stats.values()])
        if world > 1:
            torch.distributed.all_reduce(sums)
        total, *means = (sums / global_units).tolist()
        return local / global_units * world, total, dict(zip(stats, means, strict=True))

    def _stats(self, logps: PreferenceLogps) -> dict[str, torch.Tensor]:
        """Per-unit statistics summed over this process's units, by metric name (the caller
        divides by the global unit count)."""
        if self.feedback:
            return {}
        with torch.no_grad():
            policy = logps.policy.detach()
            stats = {"train.preference_accuracy": (policy[:, 0] > policy[:, 1]).float().sum()}
            if logps.reference is not None:
                ratios = policy - logps.reference
                margin = ratios[:, 0] - ratios[:, 1]
                stats["train.reward_accuracy"] = (margin > 0).float().sum()
                stats["train.reward_margin"] = margin.sum()
        return stats


def _on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
