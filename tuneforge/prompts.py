"""How a validated record becomes text: the prompt the model sees and the response it must give.

Training (every strategy) and evaluation render through these two functions, so the model is
always asked questions in the format it was trained on. A tokenizer with a chat template uses
it; one without (the tiny model's) gets a plain Alpaca-style template.
"""

from __future__ import annotations

import weakref
from typing import Any

Message = dict[str, str]
_END_OF_TURN: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

_PLAIN_HEADERS = {"system": "### System:", "user": "### Instruction:", "assistant": "### Response:"}


def instruction_prompt(instruction: str, input_text: Any = None) -> str:
    """The user turn of an Alpaca-style record: the instruction, then its input if any."""
    if isinstance(input_text, str) and input_text.strip():
        return f"{instruction}\n\n{input_text}"
    return instruction


def split_turns(record: dict[str, Any]) -> tuple[list[Message], str]:
    """Splits a record's messages into the prompt turns and the final assistant response."""
    messages = record["messages"]
    return messages[:-1], messages[-1]["content"]


def render_prompt(turns: list[Message], tokenizer: Any) -> str:
    """Renders prompt turns as text ending where the assistant's answer should begin."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=False, return_dict=False
        )
    parts = [f"{_PLAIN_HEADERS[t['role']]}\n{t['content']}\n\n" for t in turns]
    return "".join(parts) + _PLAIN_HEADERS["assistant"] + "\n"


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an answer: the chat template's own end of turn when it writes a
    special token right after the assistant's text (ChatML `<|im_end|>`, Llama-3 `<|eot_id|>`,
    Gemma `<end_of_turn>`, Phi-3 `<|end|>`), else the end-of-sequence token. Training appends it
    to every response, so the model learns to stop where its format ends a turn."""
    eos = tokenizer.eos_token_id
    if not getattr(tokenizer, "chat_template", None):
        return eos
    if tokenizer in _END_OF_TURN:
        return _END_OF_TURN[tokenizer]
    answer = "A."
    turns = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]
    full = tokenizer.apply_chat_template(turns, tokenize=False, return_dict=False)
    after = full[full.rfind(answer) + len(answer) :]
    ids = tokenizer(after, add_special_tokens=False).input_ids if after else []
    special = set(tokenizer.all_special_ids) | {
        i for i, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    _END_OF_TURN[tokenizer] = found = ids[0] if ids and ids[0] in special else eos
    return found


def stop_token_ids(tokenizer: Any) -> list[int]:
    """What generation stops at: the end of turn and the end-of-sequence token."""
    return sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
