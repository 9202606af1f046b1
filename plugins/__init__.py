"""The public plugin API: everything a tuning strategy imports from tuneforge.

    from tuneforge.plugins import IGNORE_INDEX, Example, TuningStrategy, tokenize_prompt_response
    from tuneforge.plugins import Capabilities   # what data it trains on (default: chat)
    from tuneforge.plugins import tokenize_text_blocks   # raw text (data.schema: text)
    from tuneforge.plugins.testing import check_strategy, sample_records, tiny_checkpoint
    from tuneforge.plugins import Evaluator    # an evaluation metric (tuneforge.evaluators)
    from tuneforge.plugins import BenchmarkEvaluator, BenchmarkResult   # one scoring the model
    from tuneforge.plugins.testing import check_evaluator
    from tuneforge.plugins import PreferenceStrategy, PreferenceSettings, PreferenceLogps
                                              # one learning from preferences (dpo, kto, ...)
    from tuneforge.plugins import LoraSettings, add_lora, qlora_load_options, save_adapter
                                              # LoRA/QLoRA adapters, for any strategy

These names, and `tuneforge.plugins.testing`, are the stable API (docs/writing-a-strategy.md);
everything else in tuneforge may change between versions. The built-in strategies (`full`,
`instruction`, `lora`, `pretrain`, `dpo`, `simpo`, `kto`) are written against the same API,
one file each beside this one.
"""

from tuneforge.batching import IGNORE_INDEX, Example
from tuneforge.plugins.adapters import LoraSettings, add_lora, qlora_load_options, save_adapter
from tuneforge.plugins.evaluator import BenchmarkEvaluator, BenchmarkResult, Evaluator
from tuneforge.plugins.preference import PreferenceLogps, PreferenceSettings, PreferenceStrategy
from tuneforge.plugins.strategy import Capabilities, TuningStrategy
from tuneforge.plugins.tokenization import (
    check_chat_template,
    tokenize_prompt_response,
    tokenize_prompt_responses,
    tokenize_text_blocks,
)

__all__ = [
    "IGNORE_INDEX",
    "BenchmarkEvaluator",
    "BenchmarkResult",
    "Capabilities",
    "Evaluator",
    "Example",
    "LoraSettings",
    "PreferenceLogps",
    "PreferenceSettings",
    "PreferenceStrategy",
    "TuningStrategy",
    "add_lora",
    "check_chat_template",
    "qlora_load_options",
    "save_adapter",
    "tokenize_prompt_response",
    "tokenize_prompt_responses",
    "tokenize_text_blocks",
]
