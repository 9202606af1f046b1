"""The preference losses equal their reference implementations on identical inputs.

- `dpo` (sigmoid, ipo, hinge) equals TRL's `DPOTrainer._compute_loss`: on the log-probabilities
  of a batch TRL tokenized and collated itself, and end to end on tuneforge's own examples, its
  log-probabilities taken by `completion_logps`;
- `simpo` equals TRL's `CPOTrainer.cpo_loss` (`loss_type="simpo"`, alpha 0, no smoothing);
- `kto` equals the published formula, written out here with plain loops (TRL 1.16 has no KTO
  trainer left to compare with), its KL reference point carrying no gradient.

The policy and the reference are two differently initialised tiny models, so the log-ratios
are far from zero and every loss is in a non-trivial regime.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tuneforge.batching import IGNORE_INDEX, collate
from tuneforge.models import load_pretrained
from tuneforge.plugins.dpo import DpoStrategy, dpo_losses
from tuneforge.plugins.kto import kto_losses
from tuneforge.plugins.preference import PreferenceLogps, completion_logps, rejected_record
from tuneforge.plugins.simpo import simpo_losses
from tuneforge.plugins.testing import sample_preference_records, tiny_checkpoint
from tuneforge.prompts import render_prompt, split_turns
from tuneforge.training import padding_free

PAIRS = 6
# (loss_type, beta): each TRL variant tuneforge implements, at two temperatures for sigmoid.
DPO_CASES = [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.3), ("hinge", 0.1)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("preference-losses") / "tiny")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return sample_preference_records(PAIRS)


def _models(checkpoint: Path) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """A fresh policy and a reference initialised differently (the checkpoint's weights plus
    noise of their own scale), both in eval mode: no dropout, deterministic forwards."""
    policy, tokenizer = load_pretrained(checkpoint)
    reference, _ = load_pretrained(checkpoint)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=noise) * 0.02)
    return policy.eval(), reference.eval(), tokenizer


def _trainer(policy, reference, tokenizer, records, loss_type, beta, out: Path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [
        {
            "prompt": render_prompt(split_turns(r)[0], tokenizer),
            "chosen": split_turns(r)[1],
            "rejected": r["rejected"],
        }
        for r in records
    ]
    args = DPOConfig(
        output_dir=str(out),
        beta=beta,
        loss_type=[loss_type],
        per_device_train_batch_size=len(rows),
        max_length=256,
        use_cpu=True,
        bf16=False,  # TRL's default is bf16; the comparison is in float32
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def _summed_logps(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Each row's summed log-probability of its completion tokens, computed directly: the
    full logits, log-softmax, the next token's entry, masked and summed."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token * completion_mask[:, 1:]).sum(1)


def _as_pairs(values: torch.Tensor) -> torch.Tensor:
    """TRL's `[chosen..., rejected...]` rows as tuneforge's `(units, 2)` columns."""
    chosen, rejected = values.chunk(2)
    return torch.stack([chosen, rejected], dim=1)


def _trl_loss(trainer, batch) -> torch.Tensor:
    with torch.no_grad():
        return trainer._compute_loss(trainer.model, batch, return_outputs=False)


@pytest.mark.parametrize(("loss_type", "beta"), DPO_CASES)
def test_dpo_equals_trl_on_trls_own_batch(checkpoint, records, tmp_path, loss_type, beta):
    """TRL tokenizes and collates the pairs; both losses read the same log-probabilities."""
    policy, reference, tokenizer = _models(checkpoint)
    trainer = _trainer(policy, reference, tokenizer, records, loss_type, beta, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "completion_mask"}
    assert batch["input_ids"].shape[0] == 2 * PAIRS
    expected = _trl_loss(trainer, batch)

    ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logps = PreferenceLogps(
        policy=_as_pairs(_summed_logps(policy, ids, mask, completion)),
        reference=_as_pairs(_summed_logps(reference, ids, mask, completion)),
        tokens=_as_pairs(completion[:, 1:].sum(1).float()),
    )
    margins = logps.logratios[:, 0] - logps.logratios[:, 1]
    assert margins.abs().min() > 1e-3, "the reference must differ from the policy"
    if loss_type == "hinge":  # not every pair past the hinge: the comparison means something
        assert (1 - beta * margins).max() > 0
    actual = dpo_losses(logps, beta, loss_type).mean()
    torch.testing.assert_close(actual, expected.float(), rtol=1e-5, atol=1e-6)


def _tuneforge_examples(tokenizer, records):
    """Each pair's chosen and rejected examples, as the preference loop builds them."""
    strategy = DpoStrategy(DpoStrategy.Settings())
    return [
        strategy.build_example(r, tokenizer, 256)
        for record in records
        for r in (record, rejected_record(record))
    ]


def _trl_batch(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """The same examples in TRL's layout: every chosen row, then every rejected row, with the
    trained (answer) tokens as `completion_mask`."""
    ordered = examples[0::2] + examples[1::2]
    padded = collate(ordered, pad_id)
    completion = (padded["labels"] != IGNORE_INDEX).long()
    return {
        "input_ids": padded["input_ids"],
        "attention_mask": padded["attention_mask"],
        "completion_mask": completion,
    }


@pytest.mark.parametrize(("loss_type", "beta"), DPO_CASES)
def test_dpo_equals_trl_end_to_end_on_tuneforge_examples(
    checkpoint, records, tmp_path, loss_type, beta
):
    """tuneforge's examples, log-probabilities (`completion_logps`) and loss against TRL's
    `_compute_loss` on the very same tokens."""
    policy, reference, tokenizer = _models(checkpoint)
    trainer = _trainer(policy, reference, tokenizer, records, loss_type, beta, tmp_path)
    examples = _tuneforge_examples(tokenizer, records)
    expected = _trl_loss(trainer, _trl_batch(examples, tokenizer.pad_token_id))

    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        policy_logps, tokens = completion_logps(policy, batch, PAIRS)
        reference_logps, _ = completion_logps(reference, batch, PAIRS)
    actual = dpo_losses(PreferenceLogps(policy_logps, reference_logps, tokens), beta, loss_type)
    torch.testing.assert_close(actual.mean(), expected.float(), rtol=1e-5, atol=1e-6)


def test_completion_logps_on_tuneforge_batches(checkpoint, records):
    """`completion_logps` gives `(units, 2)` finite sums over exactly the answer tokens, equal
    to a direct computation, on padded and on padding-free batches alike."""
    policy, _, tokenizer = _models(checkpoint)
    examples = _tuneforge_examples(tokenizer, records)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        sums, tokens = completion_logps(policy, batch, PAIRS)
    assert sums.shape == tokens.shape == (PAIRS, 2)
    assert torch.isfinite(sums).all() and (sums < 0).all()
    trained = [sum(y != IGNORE_INDEX for y in e.labels[1:]) for e in examples]
    assert tokens.flatten().tolist() == trained

    completion = (batch["labels"] != IGNORE_INDEX).long()
    direct = _summed_logps(policy, batch["input_ids"], batch["attention_mask"], completion)
    torch.testing.assert_close(sums.flatten(), direct, rtol=1e-5, atol=1e-5)

    flat = padding_free.collate_flat(examples, 8, tokenizer.pad_token_id)  # with a filler
    with torch.no_grad(), padding_free.attention(policy):
        flat_sums, flat_tokens = completion_logps(policy, flat, PAIRS)
    torch.testing.assert_close(flat_sums, sums, rtol=1e-4, atol=1e-4)
    assert torch.equal(flat_tokens, tokens)


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (2.5, 1.0), (0.5, 0.0), (10.0, 3.0)])
def test_simpo_equals_trl_cpo_simpo_loss(beta, gamma):
    from trl.experimental.cpo import CPOTrainer

    generator = torch.Generator().manual_seed(0)
    policy = -torch.rand(16, 2, generator=generator, dtype=torch.float64) * 40
    tokens = torch.randint(1, 25, (16, 2), generator=generator).double()
    trl_self = SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        simpo_gamma=gamma,
        beta=beta,
        label_smoothing=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    mean = policy / tokens  # TRL's CPO takes per-token averages for simpo
    expected, _, _ = CPOTrainer.cpo_loss(trl_self, mean[:, 0], mean[:, 1])
    actual = simpo_losses(PreferenceLogps(policy, None, tokens), beta, gamma)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def _kto_by_hand(policy, reference, label, beta, w_good, w_bad):
    """KTO written out from the paper: the KL estimate is the mean log-ratio of the mismatched
    answers, clamped at 0, a constant for the gradient (a Python float here)."""
    units = len(label)
    values = policy.detach()
    kl = sum(float(values[i][1]) - float(reference[i][1]) for i in range(units)) / units
    kl = max(kl, 0.0)
    losses = []
    for i in range(units):
        ratio = policy[i][0] - reference[i][0]
        if label[i]:
            losses.append(w_good * (1 - torch.sigmoid(beta * (ratio - kl))))
        else:
            losses.append(w_bad * (1 - torch.sigmoid(beta * (kl - ratio))))
    return torch.stack(losses), kl


@pytest.mark.parametrize("kl_sign", [1, -1])
@pytest.mark.parametrize(("beta", "w_good", "w_bad"), [(0.1, 1.0, 1.0), (0.5, 1.33, 0.8)])
def test_kto_equals_the_published_formula(kl_sign, beta, w_good, w_bad):
    generator = torch.Generator().manual_seed(3)
    units = 10
    reference = -torch.rand(units, 2, generator=generator, dtype=torch.float64) * 30
    shift = torch.rand(units, 2, generator=generator, dtype=torch.float64) * 8 - 4
    shift[:, 1] = shift[:, 1].abs() * kl_sign  # mismatched log-ratios all above / below 0
    label = torch.tensor([i % 3 != 0 for i in range(units)])

    policy = (reference + shift).requires_grad_(True)
    actual = kto_losses(PreferenceLogps(policy, reference, None, label), beta, w_good, w_bad)
    actual.sum().backward()

    by_hand = (reference + shift).requires_grad_(True)
    expected, kl = _kto_by_hand(by_hand, reference, label.tolist(), beta, w_good, w_bad)
    expected.sum().backward()

    assert (kl > 0) == (kl_sign > 0)  # both sides of the clamp are covered
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    # No gradient through the KL estimate: the mismatched answers' log-probabilities get none.
    assert torch.equal(policy.grad[:, 1], torch.zeros(units, dtype=torch.float64))
    assert (policy.grad[:, 0] != 0).all()
    torch.testing.assert_close(policy.grad, by_hand.grad, rtol=1e-12, atol=1e-12)
    # ... and the reference point really is the clamped mean of those log-ratios.
    assert math.isclose(kl, max(float(shift[:, 1].mean()), 0.0), rel_tol=1e-12)
