"""Exports of a saved version (tuneforge/exports/version.py): merged checkpoints that reproduce
it exactly, adapters checked against what vLLM loads, and the parity check itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tuneforge.exports.parity import compare
from tuneforge.exports.version import ExportError, export_version, vllm_refusal
from tuneforge.packaging import ModelPackage, save_package
from tuneforge.serving import load_registered

PROMPTS = [
    "### Instruction:\nConvert to uppercase.\n\nsalt\n\n### Response:\n",
    "### Instruction:\nGive the opposite of the word.\n\nhot\n\n### Response:\n",
]


def _saved(checkpoint: Path, base: str | None, out: Path) -> Path:
    save_package(checkpoint, ModelPackage(base, "float32", 8, False), out, out.parent / "pkg")
    return out


@pytest.fixture(scope="module")
def adapter_version(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA version (rank 8, random B so it shows) whose base is bundled into it."""
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import load_pretrained

    root = tmp_path_factory.mktemp("adapter-version")
    base = Path(shutil.copytree(tiny_model_dir, root / "base"))
    model, tokenizer = load_pretrained(base)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(model, config).save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    return _saved(root / "adapter", "bundled", root / "version")


def test_a_merged_export_of_a_full_version_is_exact(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = _saved(Path(tiny_model_dir), None, tmp_path / "version")
    out = export_version(version, "merged", tmp_path / "merged")
    exported = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    parity = compare(load_registered(version, tmp_path / "s"), exported, PROMPTS, 6)
    assert parity.identical and parity.prompts == 2


def test_a_merged_export_of_an_adapter_version_is_exact(adapter_version, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_version(adapter_version, "merged", tmp_path / "merged")
    assert not (out / "adapter_config.json").exists()  # one plain checkpoint
    exported = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    reference = load_registered(adapter_version, tmp_path / "s")
    assert compare(reference, exported, PROMPTS, 6).identical


def test_an_adapter_export_is_the_adapter_with_its_base_address(adapter_version, tmp_path):
    out = export_version(adapter_version, "adapter", tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and (out / "adapter_model.safetensors").is_file()
    note = json.loads((out / "tuneforge_export.json").read_text())
    assert note == {"base": "bundled", "vllm": {"rank": 8, "needs_max_lora_rank": False}}


def test_a_full_version_has_no_adapter_to_export(tiny_model_dir, tmp_path):
    version = _saved(Path(tiny_model_dir), None, tmp_path / "version")
    with pytest.raises(ExportError, match="a full checkpoint, not an adapter"):
        export_version(version, "adapter", tmp_path / "adapter")


LORA = {"peft_type": "LORA", "r": 8, "bias": "none", "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"r": 16, "use_dora": False, "modules_to_save": None}, None),
        ({"r": 12}, "rank 12; vLLM takes ranks 1, 8, 16, 32"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
        ({"bias": "lora_only"}, "bias 'lora_only'"),
        ({"use_dora": True}, "DoRA"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "adapters on embed_tokens"),
        ({"peft_type": "IA3"}, "peft_type 'IA3'"),
    ],
)
def test_vllm_refuses_what_it_cannot_hot_load(change, reason):
    found = vllm_refusal({**LORA, **change})
    assert found == reason if reason is None else reason in found


def test_a_refused_adapter_names_why_in_one_line(adapter_version, tmp_path):
    broken = Path(shutil.copytree(adapter_version, tmp_path / "version"))
    config_path = broken / "artifacts" / "checkpoint" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "r": 12}))
    with pytest.raises(ExportError) as refused:
        export_version(broken, "adapter", tmp_path / "adapter")
    assert "vLLM cannot load this adapter: rank 12" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_parity_check_sees_a_changed_model(tiny_model_dir, tmp_path):
    from tuneforge.models import load_pretrained

    reference = load_pretrained(tiny_model_dir)
    changed = load_pretrained(tiny_model_dir)
    with torch.no_grad():
        changed[0].lm_head.weight.mul_(1.5)
    parity = compare(reference, changed, PROMPTS, 6)
    assert not parity.identical and parity.max_logit_difference > 0


def test_merged_and_adapter_exports_refuse_a_folder_that_is_not_empty(adapter_version, tmp_path):
    out = tmp_path / "exported"
    export_version(adapter_version, "adapter", out)
    before = sorted(p.name for p in out.iterdir())
    for fmt in ("merged", "adapter"):  # a merged model over an adapter would load as one
        with pytest.raises(ExportError, match=rf"{out}: not empty; export {fmt} into a new"):
            export_version(adapter_version, fmt, out)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written over


def test_a_gguf_export_names_the_model_and_refuses_what_it_cannot_write(tiny_model_dir, tmp_path):
    from gguf import GGUFReader

    version = _saved(Path(tiny_model_dir), None, tmp_path / "version")
    out = export_version(version, "gguf", tmp_path / "g", "f16", "tiny-demo-v3")
    assert out.name == "tiny-demo-v3-f16.gguf"
    assert GGUFReader(out).fields["general.name"].contents() == "tiny-demo-v3"  # not "merged"

    config_file = version / "artifacts" / "checkpoint" / "config.json"
    config = json.loads(config_file.read_text())
    # transformers runs this RoPE scaling; llama.cpp has no such GGUF setting
    config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    config_file.write_text(json.dumps(config))
    with pytest.raises(ExportError) as refused:  # the one-line error, not a bare ValueError
        export_version(version, "gguf", tmp_path / "g2", "f16", "tiny-demo-v3")
    message = str(refused.value)
    assert message.startswith("tiny-demo-v3: RoPE scaling 'dynamic' is not supported")
    assert "\n" not in message and "/tmp" not in message  # the scratch folder is not named
