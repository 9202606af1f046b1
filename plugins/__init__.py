"""The public plugin API: everything a tuning strategy imports from tuneforge.

    from tuneforge.plugins import IGNORE_INDEX, Example, TuningStrategy, tokenize_prompt_response
    from tuneforge.plugins import Capabilities   # what data it trains on (default: chat)
    from tuneforge.plugins import tokenize_text_blocks   # raw text (data.schema: text)
    from tuneforge.plugins.testing import check_strategy, sample_records, tiny_checkpoint
    from tuneforge.plugins import Evaluator    # an evaluation metric (tuneforge.evaluators)
    from tuneforge.plugins import BenchmarkEvaluator, BenchmarkResult   # one scoring the model
    from tuneforge.plugins.testing import check_evaluator

These names, and `tuneforge.plugins.testing`, are the stable API (docs/writing-a-strategy.md);
everything else in tuneforge may change between versions. The built-in strategies (`full`,
`instruction`, `lora`, `pretrain`) are written against the same API, one file each beside
this one.
"""

from tuneforge.batching import IGNORE_INDEX, Example
from tuneforge.plugins.evaluator import BenchmarkEvaluator, BenchmarkResult, Evaluator
from tuneforge.plugins.strategy import Capabilities, TuningStrategy
from tuneforge.plugins.tokenization import (
    check_chat_template,
    tokenize_prompt_response,
    tokenize_text_blocks,
)

__all__ = [
    "IGNORE_INDEX",
    "BenchmarkEvaluator",
    "BenchmarkResult",
    "Capabilities",
    "Evaluator",
    "Example",
    "TuningStrategy",
    "check_chat_template",
    "tokenize_prompt_response",
    "tokenize_text_blocks",
]
