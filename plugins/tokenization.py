"""Free functions strategies share to turn records into training examples."""

from __future__ import annotations

from typing import Any

from tuneforge.batching import IGNORE_INDEX, Example
from tuneforge.prompts import end_of_turn_id, render_prompt, split_turns


def tokenize_prompt_response(
    record: dict[str, Any], tokenizer: Any, max_length: int, *, train_prompt: bool
) -> Example:
    """Tokenizes prompt and response separately (so the boundary is exact) and labels them.

    The response ends with the end of turn (`tuneforge.prompts.end_of_turn_id`: the chat
    template's, e.g. `<|im_end|>`, else the end-of-sequence token), which is trained: a model
    that never learns to stop rambles past its answer. Examples longer than `max_length` lose
    their tail.

    Args:
        record: a validated record with `messages`.
        tokenizer: a Hugging Face tokenizer.
        max_length: maximum number of tokens kept.
        train_prompt: when False the prompt tokens get `IGNORE_INDEX` (response-only loss).
    """
    return tokenize_prompt_responses([record], tokenizer, max_length, train_prompt=train_prompt)[0]


def tokenize_prompt_responses(
    records: list[dict[str, Any]], tokenizer: Any, max_length: int, *, train_prompt: bool
) -> list[Example]:
    """`tokenize_prompt_response` of many records: the same examples, with the tokenizer
    called once for all their prompts and once for all their responses (a fast tokenizer
    encodes a batch in Rust, in parallel: several times sooner than one call per text)."""
    split = [split_turns(r) for r in records]
    prompts = [render_prompt(turns, tokenizer) for turns, _ in split]
    prompt_ids = encode_texts(tokenizer, prompts)
    responses = [response for _, response in split]
    response_ids = encode_texts(tokenizer, responses)
    end = end_of_turn_id(tokenizer)
    examples = []
    for prompt, response in zip(prompt_ids, response_ids, strict=True):
        response = [*response, end]
        input_ids = (prompt + response)[:max_length]
        prompt_labels = prompt if train_prompt else [IGNORE_INDEX] * len(prompt)
        examples.append(Example(input_ids, (prompt_labels + response)[:max_length]))
    return examples


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """`tokenizer(texts, add_special_tokens=False).input_ids`, sooner where it can be: a fast
    tokenizer's Rust backend is called directly while its state is what that call would set
    (no truncation, no padding, special tokens split or not as the tokenizer says, no subclass
    encoding its own way), which skips turning every encoding into a dict of lists (a third of
    the tokenizing time at 1M rows)."""
    if not texts:
        return []
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    plain = getattr(type(tokenizer), "_encode_plus", None) is PreTrainedTokenizerFast._encode_plus
    if (
        plain  # a subclass that encodes in Python of its own is called as it expects
        and backend is not None
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False).input_ids


def check_chat_template(tokenizer: Any) -> None:
    """Refuses a chat template whose rendered prompt is not a prefix of the rendered
    conversation: then the prompt/response boundary, and so the loss mask, would be wrong."""
    if not getattr(tokenizer, "chat_template", None):
        return  # the plain template marks the response by construction
    turns = [{"role": "user", "content": "Q?"}]
    prompt = render_prompt(turns, tokenizer)
    full = tokenizer.apply_chat_template(
        [*turns, {"role": "assistant", "content": "A."}], tokenize=False, return_dict=False
    )
    if not full.startswith(prompt) or "A." not in full[len(prompt) :]:
        name = getattr(tokenizer, "name_or_path", "the tokenizer")
        raise ValueError(
            f"{name}: its chat template cannot mark the assistant turn (the prompt rendered "
            "with a generation prompt is not a prefix of the full conversation)"
        )


def tokenize_text_blocks(record: dict[str, Any], tokenizer: Any, max_length: int) -> list[Example]:
    """Splits a raw-text record (`{"row", "task", "text"}`) into blocks of at most
    `max_length` tokens, every token trained (causal-LM loss): nothing is cut off and lost.

    The document ends with the end-of-sequence token, trained, in its last block. A block
    boundary costs the next block the context before it (each block is its own sequence);
    overlapping blocks would keep some of it at the price of training tokens twice.

    Args:
        record: a validated text record.
        tokenizer: a Hugging Face tokenizer.
        max_length: tokens per block (`train.max_length`).
    """
    ids = tokenizer(record["text"], add_special_tokens=False).input_ids
    ids = [*ids, tokenizer.eos_token_id]
    # A last block of one token trains nothing (the causal shift never trains position 0):
    # it joins the block before when that one has room, else the split moves back a token.
    blocks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    if len(blocks) > 1 and len(blocks[-1]) == 1:
        blocks[-2:] = [blocks[-2][:-1], [blocks[-2][-1], blocks[-1][0]]]
    return [Example(input_ids=block, labels=list(block)) for block in blocks]
