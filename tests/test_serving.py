"""A registered version as MLflow loads it (`tuneforge/serving.py`): what `predict` accepts,
where an adapter's base comes from, and that an adapter version loads after the files it was
trained from are gone. The whole path through a real `retrain` and a fresh process is in
tests/flows/test_retrain.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tuneforge.config import RegistryConfig
from tuneforge.models import load_pretrained
from tuneforge.run_context import RunContext
from tuneforge.serving import conversations, materialize

USER = "user"


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": USER, "content": text}]


def test_inputs_become_the_prompt_turns_training_used():
    chat = [{"role": "system", "content": "Be brief."}, {"role": USER, "content": "Hi"}]
    assert conversations(
        [
            "Convert to uppercase.\n\nsalt",
            {"instruction": "Convert to uppercase.", "input": "salt"},
            {"instruction": "Name a colour.", "input": ""},
            {"prompt": "Say hi"},
            {"messages": chat},
        ]
    ) == [
        _user("Convert to uppercase.\n\nsalt"),
        _user("Convert to uppercase.\n\nsalt"),  # as tuneforge.records joins them
        _user("Name a colour."),
        _user("Say hi"),
        chat,
    ]
    assert conversations({"instruction": "a"}) == [_user("a")]  # one input, not a list
    assert conversations("a") == [_user("a")]
    frame = pd.DataFrame({"instruction": ["a", "b"], "input": ["c", None]})
    assert conversations(frame) == [_user("a\n\nc"), _user("b")]
    assert conversations(pd.DataFrame({0: ["p", "q"]})) == [_user("p"), _user("q")]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"question": "x"}, "got keys ['question']"),
        ({"instruction": "x", "output": "y"}, "got keys ['instruction', 'output']"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "last message must be the user"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role: system|user|assistant"),
        ({"messages": []}, "non-empty list"),
        (7, "expected a string or a dict, got int"),
    ],
)
def test_inputs_it_cannot_answer_are_refused_naming_them(bad, message):
    with pytest.raises(ValueError, match="input 1: ") as refused:
        conversations(["fine", bad])
    assert message in str(refused.value)


def test_an_adapter_records_a_base_address_that_outlives_the_worker(tmp_path: Path):
    from tuneforge.packaging import adapter_base

    pinned = {"tuneforge.parent_version": "demo/7", "tuneforge.base_model": "models:/demo@x"}
    assert adapter_base(str(tmp_path / "run" / "base"), pinned) == "models:/demo/7"
    snapshot = tmp_path / "hub" / "models--Org--Name" / "snapshots" / "0123abc"
    hub = {"tuneforge.base_model": "Org/Name"}
    assert adapter_base(str(snapshot), hub) == "hf://Org/Name@0123abc"
    assert adapter_base(str(tmp_path / "run" / "base"), {"tuneforge.base_model": "tiny"}) == (
        "bundled"
    )


def _adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter whose update is not zero (B is random too), so applying it shows."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_pretrained(base_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(model, config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.mark.parametrize("adapters", ["adapter", "merged"])
def test_adapter_version_loads_after_its_base_and_adapter_are_deleted(
    tiny_model_dir: Path, tmp_path: Path, adapters: str
):
    import mlflow.pyfunc

    from tuneforge.packaging import save_package
    from tuneforge.tasks.register import _package

    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "scratch" / "base"))
    adapter = _adapter(base, tmp_path / "scratch" / "adapter")
    tuned, tokenizer = load_pretrained(adapter)  # the base with the adapter applied
    plain, _ = load_pretrained(base)
    prompt = "### Instruction:\nConvert to uppercase.\n\nsalt\n\n### Response:\n"
    expected, untuned = _logits(tuned, tokenizer, prompt), _logits(plain, tokenizer, prompt)

    ctx = RunContext(run_id="r", tracking_uri="sqlite://", run_dir=str(tmp_path))
    registry = RegistryConfig(adapters=adapters)
    lineage = {"tuneforge.base_model": "tiny"}
    checkpoint, package = _package(str(adapter), lineage, registry, ctx, 5, str(tmp_path))
    assert package.base == ("bundled" if adapters == "adapter" else None)
    save_package(Path(checkpoint), package, tmp_path / "model", tmp_path / "pkg")
    shutil.rmtree(tmp_path / "scratch")  # what a worker's pod takes with it

    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    served = loaded.unwrap_python_model()
    logits = _logits(served.model, served.tokenizer, prompt)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert not torch.allclose(logits, untuned, atol=1e-2)  # the adapter was applied
    answers = loaded.predict(["salt", {"instruction": "x"}], params={"max_new_tokens": 3})
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    model_dir = str(tmp_path / "model")
    example = mlflow.models.Model.load(model_dir).load_input_example(model_dir)
    assert len(loaded.predict(example, params={"max_new_tokens": 2})) == len(example) == 4
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="got keys \\['question'\\]") as refused:
        loaded.predict([{"question": "x"}])  # served: HTTP 400 with this message alone
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert refused.value.message.startswith("input 0: a dict needs")


def test_adapter_on_a_hub_base_resolves_it_offline_at_its_commit(
    tiny_model_dir: Path, tmp_path: Path
):
    import mlflow.pyfunc

    from tests.conftest import cache_hub_checkpoint
    from tuneforge.packaging import save_package
    from tuneforge.tasks.register import _package

    snapshot = cache_hub_checkpoint(tiny_model_dir, "tuneforge-test/hub-base", "b2" * 20)
    adapter = _adapter(snapshot, tmp_path / "adapter")  # as a run from model.source: Org/Name
    ctx = RunContext(run_id="r", tracking_uri="sqlite://", run_dir=str(tmp_path))
    lineage = {"tuneforge.base_model": "tuneforge-test/hub-base"}
    _, package = _package(str(adapter), lineage, RegistryConfig(), ctx, 5, str(tmp_path))
    assert package.base == "hf://tuneforge-test/hub-base@" + "b2" * 20
    save_package(adapter, package, tmp_path / "model", tmp_path / "pkg")
    assert not (tmp_path / "model" / "artifacts" / "base").exists()  # referenced, not bundled
    served = mlflow.pyfunc.load_model(str(tmp_path / "model")).unwrap_python_model()
    tuned, tokenizer = load_pretrained(adapter)
    prompt = "hello"
    assert torch.allclose(
        _logits(served.model, tokenizer, prompt), _logits(tuned, tokenizer, prompt), atol=1e-4
    )


def test_versions_logged_before_layout_1_still_materialize(tiny_model_dir: Path, tmp_path: Path):
    import mlflow.transformers

    model, tokenizer = load_pretrained(tiny_model_dir)
    old = tmp_path / "old"
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(old),
        task="text-generation",
        pip_requirements=["torch", "transformers"],  # not inferred: that imports torchvision
    )
    checkpoint = materialize(old, tmp_path / "scratch")
    reloaded, _ = load_pretrained(checkpoint)
    prompt = "hello"
    assert torch.equal(_logits(reloaded, tokenizer, prompt), _logits(model, tokenizer, prompt))
