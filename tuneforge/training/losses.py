"""Losses the engine computes: the training step's token-mean loss over a (global) batch, and
each record's summed response loss, which periodic evaluation and `tuneforge.evaluation` score.

Both run the output head only where a token is scored, a chunk at a time where the model
allows it (`chunked_head.py`): at a real vocabulary the logits are the biggest tensor by far.
"""

from __future__ import annotations

from typing import Any

import torch

from tuneforge.batching import IGNORE_INDEX, collate
from tuneforge.plugins.tokenization import tokenize_prompt_response, tokenize_text_blocks
from tuneforge.records import is_text
from tuneforge.training.chunked_head import chunk_unsupported, chunked_head_loss, token_losses


def token_mean_loss(
    model: Any, batch: dict[str, Any], world: int, slim: bool = True, chunk: int = 0
) -> tuple[torch.Tensor, float]:
    """Cross-entropy averaged over the trained tokens of the whole (global) batch.

    `batch` is padded (`collate`) or padding-free (`padding_free.collate_flat`). With `slim`
    the output head runs only where a trained token is predicted (the model's
    `logits_to_keep`), not on prompts and padding: the same loss, less work. With `chunk` the
    head and loss run that many trained positions at a time (`chunked_head.py`).

    Returns the loss to backpropagate and the global mean for logging. Under DDP each rank holds
    a shard; its loss is scaled so that DDP's gradient averaging over ranks gives exactly the
    gradient of the token mean over the global batch, as one process would compute it.
    """
    labels = batch["labels"]
    trained = labels[:, 1:] != IGNORE_INDEX
    keep = torch.nn.functional.pad(trained, (0, 1))  # position i predicts token i + 1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = labels[:, 1:][trained]
    if chunk:
        local = chunked_head_loss(model, inputs, keep, targets, chunk)
    else:
        if slim:
            inputs["logits_to_keep"] = keep
        logits = model(**inputs).logits
        if not slim:
            logits = logits[keep]
        local = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets, reduction="sum"
        )
    sums = torch.stack([local.detach(), trained.sum().to(local.dtype)])
    if world > 1:
        torch.distributed.all_reduce(sums)
    total, count = sums.tolist()
    return local / count * world, total / count


EVAL_CHUNK = 1024  # scored positions whose logits exist at once (train.loss_chunk_tokens)


@torch.inference_mode()
def record_losses(
    model: Any, tokenizer: Any, records: list[dict], max_length: int, bs: int
) -> list[tuple[float, int]]:
    """Per record: the summed cross-entropy of its response tokens and how many there are
    (prompt and padding are not scored); for raw-text records, of every token of the text, in
    `max_length` blocks as training sees it."""
    examples, owner = [], []
    for i, r in enumerate(records):
        if is_text(r):
            blocks = tokenize_text_blocks(r, tokenizer, max_length)
        else:
            blocks = [tokenize_prompt_response(r, tokenizer, max_length, train_prompt=False)]
        examples += blocks
        owner += [i] * len(blocks)
    sums, counts = [0.0] * len(records), [0] * len(records)
    # At a real vocabulary a batch's logits would be the biggest tensor by far (32 x 512 x
    # 151,936 floats: 10 GB): the head runs on scored positions, a chunk at a time.
    chunked = chunk_unsupported(model) is None
    for start in range(0, len(examples), bs):
        batch = examples[start : start + bs]
        inputs = {k: v.to(model.device) for k, v in collate(batch, tokenizer.pad_token_id).items()}
        labels = inputs["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        if chunked:
            keep = torch.nn.functional.pad(scored, (0, 1))  # position i predicts token i + 1
            losses = torch.zeros(labels.shape, device=labels.device)
            losses[scored] = token_losses(model, model_inputs, keep, labels[scored], EVAL_CHUNK)
        else:
            logits = model(**model_inputs).logits
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(labels.shape)
        for j, (total, count) in enumerate(
            zip((losses * scored).sum(1).tolist(), scored.sum(1).tolist(), strict=True)
        ):
            sums[owner[start + j]] += total
            counts[owner[start + j]] += count
    return list(zip(sums, counts, strict=True))


def response_loss(
    model: Any, tokenizer: Any, records: list[dict], max_length: int, bs: int
) -> float:
    """Mean cross-entropy per response token (per text token for raw text)."""
    per_record = record_losses(model, tokenizer, records, max_length, bs)
    total, count = sum(s for s, _ in per_record), sum(n for _, n in per_record)
    if not count:
        raise ValueError(f"no response token left to score within max_length={max_length}")
    return total / count
