"""Does an export answer like the registered version? Greedy answers of both on the same
prompts, and the largest difference in their logits over the prompts' tokens.

    report = compare(registered, exported, prompts)   # models in memory, tokenizers with them
    report.same_answers, report.max_logit_difference
    report = check_export(version_root, export_path, "gguf", records, scratch)   # from files

A merged export must match exactly (the same weights, saved and read back); a GGUF one differs
by its rounding (f16, bf16, q8_0), which the report measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Parity:
    """What `compare` measured."""

    prompts: int
    same_answers: int  # prompts whose greedy answers are equal
    max_logit_difference: float  # over every prompt token and vocabulary entry
    differing: list[dict[str, str]] = field(default_factory=list)  # prompt, theirs, ours

    @property
    def identical(self) -> bool:
        return self.same_answers == self.prompts and self.max_logit_difference == 0.0


def compare(
    reference: tuple[Any, Any], candidate: tuple[Any, Any], prompts: list[str], max_new_tokens: int
) -> Parity:
    """`reference` and `candidate` are (model, tokenizer) pairs in evaluation mode; `prompts`
    are rendered as the model is asked (`tuneforge.prompts.render_prompt`)."""
    import torch

    from tuneforge.serving import generate

    answers = [generate(m, t, prompts, max_new_tokens, 8) for m, t in (reference, candidate)]
    worst = 0.0
    with torch.inference_mode():
        for prompt in prompts:
            ids = [
                t(prompt, return_tensors="pt", add_special_tokens=False).input_ids
                for _, t in (reference, candidate)
            ]
            if not torch.equal(ids[0], ids[1]):
                raise ValueError(f"the two tokenizers encode {prompt[:40]!r}... differently")
            logits = [
                m(input_ids=ids[0].to(m.device)).logits.float().cpu()
                for m, _ in (reference, candidate)
            ]
            worst = max(worst, (logits[0] - logits[1]).abs().max().item())
    differing = [
        {"prompt": p, "reference": a, "export": b}
        for p, a, b in zip(prompts, *answers, strict=True)
        if a != b
    ]
    return Parity(len(prompts), len(prompts) - len(differing), worst, differing)


def check_export(
    root: Path,
    exported: Path,
    fmt: str,
    records: list[dict[str, Any]],
    scratch: Path,
    max_new_tokens: int = 16,
) -> Parity:
    """The export at `exported` (format `fmt`) against the downloaded version at `root`, each
    loaded from its files, on canonical chat records' prompts rendered as the version is asked."""
    from tuneforge.prompts import render_prompt, split_turns
    from tuneforge.serving import load_registered

    reference = load_registered(root, scratch / "reference")
    candidate = load_export(root, exported, fmt, scratch)
    for model, _ in (reference, candidate):
        model.eval()
    prompts = [render_prompt(split_turns(r)[0], reference[1]) for r in records]
    return compare(reference, candidate, prompts, max_new_tokens)


def load_export(root: Path, exported: Path, fmt: str, scratch: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of an export, loaded by code that is not tuneforge's: transformers
    (its GGUF reader for gguf), PEFT over the adapter's base for an adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt == "gguf":
        folder, name = exported.parent, exported.name
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    if fmt == "merged":
        return AutoModelForCausalLM.from_pretrained(exported), tokenizer
    from peft import PeftModel

    from tuneforge.serving import read_manifest, resolve_base

    manifest = read_manifest(root) or {}
    base_dir = resolve_base(manifest["base"], root, scratch / "base", False)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=manifest.get("dtype", "float32"))
    return PeftModel.from_pretrained(base, exported).merge_and_unload(), tokenizer
