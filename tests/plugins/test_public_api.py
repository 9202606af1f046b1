"""The public plugin API: what it offers, that its test kit gives what it says, and that the
plugins in this repository (built-in and example) import nothing else from tuneforge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PUBLIC = {"tuneforge.plugins", "tuneforge.plugins.testing"}


def _tuneforge_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "tuneforge"}


@pytest.mark.parametrize(
    "path",
    [
        *sorted((REPO / "examples" / "tuneforge-bitfit").rglob("*.py")),
        *sorted((REPO / "examples" / "tuneforge-jsonvalid").rglob("*.py")),
        *(
            REPO / "plugins" / f"{name}.py"
            for name in (
                "full",
                "instruction",
                "lora",
                "pretrain",
                "dpo",
                "simpo",
                "kto",
                "exact_match",
                "rouge_l",
                "harness",
            )
        ),
    ],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_plugins_import_only_the_public_api(path):
    assert _tuneforge_imports(path) <= PUBLIC


def test_the_public_names_are_there():
    import tuneforge.plugins as api
    import tuneforge.plugins.testing as kit

    assert set(api.__all__) == {
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
    }
    assert set(kit.__all__) == {
        "check_benchmark_evaluator",
        "check_evaluator",
        "check_strategy",
        "sample_feedback_records",
        "sample_preference_records",
        "sample_records",
        "sample_text_records",
        "tiny_checkpoint",
    }
    assert api.IGNORE_INDEX == -100


@pytest.mark.parametrize(
    ("name", "path"), [("preference", "preferences.jsonl"), ("feedback", "feedback.jsonl")]
)
def test_sample_preference_and_feedback_records_are_the_bundled_files_validated(name, path):
    from tuneforge.data.reading import read_rows
    from tuneforge.data.validation import validate_rows
    from tuneforge.plugins import testing

    sample = getattr(testing, f"sample_{name}_records")(24)
    valid, rejected = validate_rows(read_rows(str(REPO / "data" / path))[:24], 2000)

    assert rejected == [] and sample == valid


def test_sample_records_are_the_bundled_data_validated(bundled_records):
    from tuneforge.plugins.testing import sample_records

    assert sample_records(64) == bundled_records[:64]
    assert len(sample_records(5000)) == len(bundled_records)


def test_tiny_checkpoint_is_a_real_checkpoint(tmp_path):
    from tuneforge.models import load_pretrained
    from tuneforge.plugins.testing import tiny_checkpoint

    model_dir = tiny_checkpoint(tmp_path / "tiny")
    assert model_dir == tmp_path / "tiny"
    model, tokenizer = load_pretrained(model_dir)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tokenizer.eos_token_id is not None
    assert any(model_dir.glob("*.safetensors"))


@pytest.mark.parametrize("max_length", [7, 16, 64, 4096])
def test_text_blocks_keep_every_token_and_end_with_a_trained_eos(tmp_path, max_length):
    from tuneforge.models import load_pretrained
    from tuneforge.plugins import tokenize_text_blocks
    from tuneforge.plugins.testing import tiny_checkpoint

    _, tokenizer = load_pretrained(tiny_checkpoint(tmp_path / "tiny"))
    text = "Once upon a time there was a tiny model that read every word. " * 5
    record = {"row": 1, "task": None, "text": text}

    blocks = tokenize_text_blocks(record, tokenizer, max_length)

    ids = [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    assert [t for b in blocks for t in b.input_ids] == ids  # nothing cut off, nothing added
    assert all(b.labels == b.input_ids for b in blocks)  # every token trained
    assert all(2 <= len(b.input_ids) <= max_length for b in blocks)
    assert blocks[-1].input_ids[-1] == tokenizer.eos_token_id
