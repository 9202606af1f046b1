"""How a validated record becomes text: the prompt the model sees and the response it must give.

Training (every strategy) and evaluation render through these two functions, so the model is
always asked questions in the format it was trained on. A tokenizer with a chat template uses
it; one without (the tiny model's) gets a plain Alpaca-style template.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]

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
