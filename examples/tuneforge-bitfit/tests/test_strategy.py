"""The plugin's own tests: they import tuneforge's public plugin API only.

pip install -e examples/tuneforge-bitfit && pytest examples/tuneforge-bitfit/tests
"""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM
from tuneforge_bitfit.strategy import BitFitStrategy, bitfit_parameters

from tuneforge.plugins import Example
from tuneforge.plugins.testing import check_strategy, sample_records, tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def test_keeps_the_strategy_contract(model_dir):
    records = sample_records(48)
    check_strategy(BitFitStrategy, model_dir, records)
    check_strategy(BitFitStrategy, model_dir, records, settings={"train_prompt": True})


def test_trains_only_norm_weights_of_a_model_without_biases(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)  # a Llama: no bias parameters
    selected = bitfit_parameters(model, include_norms=True)
    assert selected and all("norm" in name for name in selected)
    strategy = BitFitStrategy(BitFitStrategy.Settings(include_norms=False))
    with pytest.raises(ValueError, match="no bias parameters, so nothing would train"):
        strategy.prepare_model(model)


def test_response_only_loss_by_default(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    record = sample_records(1)[0]
    example = BitFitStrategy(BitFitStrategy.Settings()).build_example(record, tokenizer, 128)
    assert isinstance(example, Example)
    assert example.labels[0] == -100  # the prompt carries no loss
    assert example.labels[-1] == tokenizer.eos_token_id
