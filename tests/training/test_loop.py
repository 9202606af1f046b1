"""The generic training loop, driven by the `full` strategy on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.batching import IGNORE_INDEX, Example, collate
from tuneforge.config import TrainConfig
from tuneforge.training.loop import batch_order, linear_schedule, train_model


def test_collate_pads_right_and_never_trains_padding():
    batch = collate([Example([5, 6, 7], [5, 6, 7]), Example([8], [IGNORE_INDEX])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [IGNORE_INDEX] * 3]


def test_batch_order_is_deterministic_and_reshuffles_each_epoch():
    a, b = batch_order(10, 4, 6, seed=0), batch_order(10, 4, 6, seed=0)
    assert a == b and len(a) == 6 and all(len(x) == 4 for x in a)
    # 10 examples in batches of 4: two full batches per epoch, the ragged tail is dropped.
    first_epoch, second_epoch = [*a[0], *a[1]], [*a[2], *a[3]]
    assert len(set(first_epoch)) == 8  # no example twice within an epoch
    assert first_epoch != second_epoch
    assert batch_order(10, 4, 6, seed=1) != a


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = linear_schedule(warmup=4, total=10)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(7) == 0.5 and factor(10) == 0.0
    short = linear_schedule(warmup=20, total=4)  # warmup capped: the peak is still reached
    assert [short(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def _train(model_dir: Path, records: list[dict], out: Path, steps: int, **kw):
    kw = {"max_length": 64, **kw}
    cfg = TrainConfig(steps=steps, batch_size=8, warmup_steps=0, log_every=1, **kw)
    logged: list[tuple[int, dict]] = []
    result = train_model(
        model_dir, records, cfg, out, on_metrics=lambda s, m: logged.append((s, m))
    )
    return result, logged


def test_full_strategy_updates_every_parameter_in_one_step(
    tiny_model_dir, bundled_records, tmp_path
):
    result, _ = _train(tiny_model_dir, bundled_records[:64], tmp_path / "out", steps=1)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(Path(result.model_dir) / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged
    assert result.trainable_parameters == result.total_parameters


def test_training_lowers_the_loss_and_logs_each_step(tiny_model_dir, bundled_records, tmp_path):
    result, logged = _train(tiny_model_dir, bundled_records[:128], tmp_path / "out", steps=40)
    assert [s for s, _ in logged] == list(range(1, 41))
    first = sum(m["train.loss"] for _, m in logged[:5]) / 5
    last = sum(m["train.loss"] for _, m in logged[-5:]) / 5
    assert last < first * 0.7
    assert result.trained_tokens > 0 and result.tokens_per_second > 0
    assert result.peak_rss_mb > 100  # torch and a model loaded: never less
    out = Path(result.model_dir)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not list(out.glob("*.bin"))


def test_same_seed_gives_the_same_model(tiny_model_dir, bundled_records, tmp_path):
    a, _ = _train(tiny_model_dir, bundled_records[:32], tmp_path / "a", steps=3)
    b, _ = _train(tiny_model_dir, bundled_records[:32], tmp_path / "b", steps=3)
    wa = load_file(Path(a.model_dir) / "model.safetensors")
    wb = load_file(Path(b.model_dir) / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_examples_truncated_to_nothing_trainable_are_refused(
    tiny_model_dir, bundled_records, tmp_path, monkeypatch
):
    from tuneforge.plugins.full import FullStrategy
    from tuneforge.plugins.tokenization import tokenize_prompt_response

    class ResponseOnly(FullStrategy):
        def build_example(self, record, tokenizer, max_length):
            return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=False)

    from tuneforge.plugins.discovery import PluginInfo

    info = PluginInfo("full", ResponseOnly, "tuneforge", "0.1.0", "tests:ResponseOnly")
    monkeypatch.setattr("tuneforge.training.loop.strategy_info", lambda name: info)
    # Every bundled prompt is longer than 9 tokens, so truncation removes the whole response.
    with pytest.raises(ValueError, match="no trained token after truncation") as raised:
        train_model(tiny_model_dir, bundled_records[:4], TrainConfig(max_length=9), tmp_path)
    assert str(raised.value).startswith("strategy 'full' (tuneforge 0.1.0): the loss-mask audit:")


def test_batched_examples_keep_their_own_loss(tiny_model_dir, bundled_records):
    """Examples batched together (padded, attention-masked) score exactly as they do alone."""
    from tuneforge.models import load_pretrained
    from tuneforge.plugins.instruction import InstructionStrategy

    model, tokenizer = load_pretrained(tiny_model_dir)
    strategy = InstructionStrategy(InstructionStrategy.Settings())
    examples = [strategy.build_example(r, tokenizer, 96) for r in bundled_records[:6]]
    assert len({len(e.input_ids) for e in examples}) > 1  # lengths differ: padding is real

    def per_example_loss(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return losses.sum(1) / (targets != IGNORE_INDEX).sum(1)

    with torch.no_grad():
        together = per_example_loss(collate(examples, tokenizer.pad_token_id))
        alone = torch.cat(
            [per_example_loss(collate([e], tokenizer.pad_token_id)) for e in examples]
        )
    assert torch.allclose(together, alone, atol=1e-5)


def test_length_grouping_reduces_padding_and_keeps_every_example():
    lengths = [5, 50, 6, 48, 7, 52, 5, 49] * 25
    grouped = batch_order(len(lengths), 4, 50, seed=0, lengths=lengths)
    plain = batch_order(len(lengths), 4, 50, seed=0)

    def padding(batches):
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    assert sorted(i for b in grouped for i in b) == list(range(200))  # one epoch, all examples
    assert padding(grouped) < padding(plain) / 5


def test_audit_counts_masked_and_truncated_examples():
    from tuneforge.batching import audit_examples

    eos = 2
    examples = [
        Example([7, 8, 9, eos], [IGNORE_INDEX, IGNORE_INDEX, 9, eos]),
        Example([7, 8, 9, 10], [IGNORE_INDEX, 8, 9, 10]),  # cut at max_length=4: eos lost
    ]
    audit = audit_examples(examples, rows=[1, 2], eos_id=eos, max_length=4)
    assert (audit.examples, audit.truncated, audit.trained_tokens, audit.masked_tokens) == (
        2,
        1,
        5,
        3,
    )


def test_audit_refuses_an_untrained_end_of_sequence():
    from tuneforge.batching import audit_examples

    example = Example([7, 8, 2], [IGNORE_INDEX, 8, IGNORE_INDEX])
    with pytest.raises(ValueError, match="row 5: the end-of-sequence token is not trained"):
        audit_examples([example], rows=[5], eos_id=2, max_length=64)


def test_a_chat_template_that_cannot_mark_the_assistant_turn_is_refused(tiny_model_dir):
    from tuneforge.models import load_pretrained
    from tuneforge.plugins.tokenization import check_chat_template

    _, tokenizer = load_pretrained(tiny_model_dir)
    check_chat_template(tokenizer)  # no template: the plain one marks the response itself
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    check_chat_template(tokenizer)  # a proper template passes
    # This one renders the generation prompt differently from a finished assistant turn.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT>{% endif %}"
    )
    with pytest.raises(ValueError, match="cannot mark the assistant turn"):
        check_chat_template(tokenizer)


def test_periodic_evaluation_keeps_the_best_step(tiny_model_dir, bundled_records, tmp_path):
    from tuneforge.evaluation import score
    from tuneforge.models import load_pretrained
    from tuneforge.serving import generate_answers

    easy = [r for r in bundled_records if r["task"] in ("first_letter", "uppercase")]
    train, held = easy[:300], easy[300:332]
    cfg = TrainConfig(
        steps=150,
        batch_size=16,
        warmup_steps=5,
        max_length=64,
        eval_every=30,
        eval_examples=32,
        learning_rate=0.01,
    )
    logged: list[tuple[int, dict]] = []
    result = train_model(
        tiny_model_dir,
        train,
        cfg,
        tmp_path,
        on_metrics=lambda s, m: logged.append((s, m)),
        eval_records=held,
    )
    evals = [
        (s, m["train.eval_exact_match"], m["train.eval_loss"])
        for s, m in logged
        if "train.eval_exact_match" in m
    ]
    assert [s for s, _, _ in evals] == [30, 60, 90, 120, 150]
    assert len({v for _, v, _ in evals}) > 1, f"scores must differ to mean much: {evals}"
    # The best exact match; among equals the lowest eval loss; among exact equals the latest.
    best_step, best, best_loss = max(evals, key=lambda e: (e[1], -e[2], e[0]))
    assert result.best_step == best_step
    assert result.best_scores == {"exact_match": best, "eval_loss": best_loss}
    # The saved model is the best step's: re-scoring it reproduces the best score.
    model, tokenizer = load_pretrained(tmp_path)
    answers = generate_answers(model, tokenizer, held, max_new_tokens=24, bs=48)
    assert score(held, answers)[0]["exact_match"] == best


def test_bf16_autocast_trains_like_fp32_and_keeps_fp32_weights(
    tiny_model_dir, bundled_records, tmp_path
):
    records = bundled_records[:64]
    _, fp32 = _train(tiny_model_dir, records, tmp_path / "fp32", steps=20)
    result, bf16 = _train(tiny_model_dir, records, tmp_path / "bf16", steps=20, precision="bf16")
    fp32_loss = [m["train.loss"] for _, m in fp32]
    bf16_loss = [m["train.loss"] for _, m in bf16]
    assert bf16_loss != fp32_loss  # autocast really ran in bfloat16
    assert abs(bf16_loss[0] - fp32_loss[0]) / fp32_loss[0] < 0.02  # same model, same batch
    assert bf16_loss[-1] < bf16_loss[0] * 0.8  # and it learns
    weights = load_file(Path(result.model_dir) / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_periodic_evaluation_breaks_ties_on_eval_loss_then_keeps_the_later_step(monkeypatch):
    """Scores as on a small dataset (exact match 0.0 at every step): the step with the lowest
    eval loss is kept, and of exact equals the later one. The scores are scripted; the choice
    and the weights kept are BestStep's own."""
    import tuneforge.training.best_step as best_step

    scripted = iter([(0.0, 3.0), (0.0, 2.0), (0.0, 2.5), (0.0, 2.0)])
    current: dict[str, float] = {}

    def fake_loss(*args, **kwargs):
        current["em"], loss = next(scripted)
        return loss

    monkeypatch.setattr(best_step, "response_loss", fake_loss)
    monkeypatch.setattr(best_step, "generate_answers", lambda *a, **k: ["x"])
    monkeypatch.setattr(best_step, "exact_match", lambda *a, **k: current["em"])
    model = torch.nn.Linear(1, 1, bias=False)
    record = {"row": 1, "task": None, "messages": [{"role": "user", "content": "q"}]}
    best = best_step.BestStep([record], tokenizer=None, every=10, max_length=64)
    for step in (10, 20, 30, 40):
        with torch.no_grad():
            model.weight.fill_(step)
        best.evaluate(model, step)

    assert (best.best_step, best.best_loss, best.best_score) == (40, 2.0, 0.0)
    assert best.weights["weight"].item() == 40.0


def _conversations(records: list[dict]) -> list[dict]:
    """Pairs of bundled rows as two-round conversations."""
    out = []
    for i in range(0, len(records) - 1, 2):
        first, second = records[i]["messages"], records[i + 1]["messages"]
        out.append({"row": i + 1, "task": "pair", "messages": [*first, *second]})
    return out


def test_assistant_turns_all_trains_every_answer_in_its_context(
    tiny_model_dir, bundled_records, tmp_path
):
    from tuneforge.records import assistant_turn_records

    chats = _conversations(bundled_records[:32])
    assert [len(r["messages"]) for r in assistant_turn_records(chats[0])] == [2, 4]

    common = {"steps": 2, "strategy": "instruction", "max_length": 160}
    last, _ = _train(tiny_model_dir, chats, tmp_path / "last", **common)
    every, _ = _train(tiny_model_dir, chats, tmp_path / "all", **common, assistant_turns="all")

    assert (last.examples, every.examples) == (16, 32)
    # The first answers' tokens train too: more trained tokens than the last answers alone.
    assert every.audit.trained_tokens > last.audit.trained_tokens


@pytest.mark.parametrize(
    ("strategy", "weights", "settings"),
    [
        ("full", "model.safetensors", {}),
        ("lora", "adapter_model.safetensors", {"dropout": 0.0}),
    ],
)
def test_gradient_checkpointing_trains_the_same_for_every_strategy(
    tiny_model_dir, bundled_records, tmp_path, strategy, weights, settings
):
    from tuneforge.training.loop import TrainingRun

    kw = {"strategy": strategy, "settings": settings}
    probe = TrainingRun(TrainConfig(gradient_checkpointing=True, **kw), tiny_model_dir, False, None)
    probe.setup(bundled_records[:8], [])
    modules = [m for m in probe.core.modules() if hasattr(m, "gradient_checkpointing")]
    assert modules and all(m.gradient_checkpointing for m in modules)  # it is really on

    runs = {}
    for on in (False, True):
        out = tmp_path / str(on)
        result, logged = _train(
            tiny_model_dir, bundled_records[:32], out, steps=3, gradient_checkpointing=on, **kw
        )
        assert result.batches == "padding-free"
        runs[on] = ([m["train.loss"] for _, m in logged], load_file(out / weights))
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    for key, value in runs[False][1].items():
        assert torch.allclose(runs[True][1][key], value, atol=1e-6), key
