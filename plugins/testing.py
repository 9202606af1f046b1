"""Conformance check for tuning strategies: what a plugin's own test suite calls.

`check_strategy` runs a strategy through everything the training loop relies on, on a real
(small) checkpoint, and fails with an AssertionError naming the first broken promise. It does
not judge whether the strategy learns well; it checks that it keeps the contract:

    pytest tests/  # in the plugin's repository, with a test that calls check_strategy
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from plugins.strategy import IGNORE_INDEX, Example, TuningStrategy

_UNKNOWN_KEY = "tuneforge_check_unknown_key"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_BATCH_SIZE = 8
_LEARNING_RATE = 1e-2


def check_strategy(
    strategy_cls: type,
    model_dir: str | Path,
    records: list[dict[str, Any]],
    settings: BaseModel | dict[str, Any] | None = None,
    max_length: int = 128,
) -> None:
    """Checks that a tuning strategy fulfils the `TuningStrategy` contract.

    In order, stopping at the first violation:

    1. the class has non-empty str `name` and `description` and a pydantic `Settings` model
       that validates `settings` (or is default-constructible) and rejects unknown keys;
    2. `strategy_cls(settings)` is a `TuningStrategy`;
    3. `prepare_model` leaves at least one parameter trainable;
    4. `build_example` on every record returns an `Example` with equally long `input_ids` and
       `labels`, at most `max_length` tokens, trained labels equal to their input tokens, at
       least one trained token after the first position (the causal shift never trains
       position 0), and a trained end-of-sequence token last unless the example was truncated
       (and the training loop's own `audit_examples` accepts them);
    5. one AdamW step (lr 1e-2) on a padded batch of the first examples (`tasks.train.collate`)
       changes at least one trainable parameter and leaves every frozen parameter bit-identical
       (compared by `named_parameters` of the prepared model, so adapter-wrapped models work);
    6. `save` writes safetensors and no pickle-based weights (`*.bin`, `*.pt`, `*.pkl`, ...),
       and the result, a checkpoint (`config.json`) or a PEFT adapter (`adapter_config.json`),
       reloads through `tasks.model_source.load_pretrained` (as evaluation and registration
       load it) and reproduces the trained model's logits (it is far closer to them than the
       training step moved them).

    Args:
        strategy_cls: the strategy class, as registered under `tuneforge.strategies`.
        model_dir: a small checkpoint (config.json, safetensors, tokenizer) to exercise it on.
        records: validated records (`{"row", "task", "messages"}`); a few dozen are enough.
        settings: the settings to build the strategy with, as a dict or a `Settings` instance;
            None uses `Settings()`.
        max_length: the `train.max_length` examples are built with.

    Raises:
        AssertionError: on the first violation, with a message saying what is wrong.
        ValueError: `model_dir` does not load. Exceptions the strategy raises itself (say
            `prepare_model` refusing a model it cannot train) propagate unchanged.

    Example:
        A plugin's test, given a small local checkpoint and a few records:

            from plugins.testing import check_strategy
            from tuneforge_bitfit.strategy import BitFitStrategy

            def test_bitfit_keeps_the_contract(tiny_model_dir, records):
                check_strategy(BitFitStrategy, tiny_model_dir, records[:32])
                check_strategy(
                    BitFitStrategy, tiny_model_dir, records[:32], {"train_prompt": True}
                )
    """
    import torch

    from tasks.model_source import ModelSourceError, load_pretrained
    from tasks.train import audit_examples, collate

    label = getattr(strategy_cls, "__qualname__", repr(strategy_cls))
    _require(records, "check_strategy needs at least one record")
    settings_obj = _check_class(strategy_cls, label, settings)

    try:
        strategy = strategy_cls(settings_obj)
    except TypeError as exc:
        raise AssertionError(
            f"{label}(settings) failed: {exc}; instances are built as Strategy(settings)"
        ) from None
    _require(
        isinstance(strategy, TuningStrategy),
        (
            f"{label}(settings) is not a TuningStrategy: it needs name, description, Settings, "
            "prepare_model, build_example and save"
        ),
    )

    try:
        model, tokenizer = load_pretrained(model_dir)
    except ModelSourceError as exc:  # the caller's fixture, not the strategy, is at fault
        raise ValueError(f"check_strategy: cannot load model_dir: {exc}") from None
    model = strategy.prepare_model(model)
    _require(model is not None, f"{label}.prepare_model returned None instead of the model")
    params = dict(model.named_parameters())
    trainable = [name for name, p in params.items() if p.requires_grad]
    _require(trainable, f"{label}.prepare_model left no parameter trainable")

    vocab = model.get_input_embeddings().num_embeddings
    examples = [
        _check_example(strategy, label, record, tokenizer, max_length, vocab) for record in records
    ]

    try:  # the loop's own audit: whatever it would refuse must fail here too
        audit_examples(
            examples, [r.get("row", -1) for r in records], tokenizer.eos_token_id, max_length
        )
    except ValueError as exc:
        raise AssertionError(f"{label}: the training loop refuses the examples: {exc}") from None

    # One optimizer step exactly as the training loop takes it.
    torch.manual_seed(0)
    device = next(iter(params.values())).device
    batch = collate(examples[:_BATCH_SIZE], tokenizer.pad_token_id)
    batch = {key: value.to(device) for key, value in batch.items()}
    before = {name: p.detach().clone() for name, p in params.items()}
    logits_before = _logits(model, batch)
    model.train()
    loss = model(**batch).loss
    _require(loss is not None, f"{label}: the prepared model returns no loss when given labels")
    _require(torch.isfinite(loss), f"{label}: loss on the first batch is {loss.item()}")
    _require(
        loss.requires_grad,
        (
            f"{label}: the loss does not depend on any trainable parameter "
            f"(trainable: {_names(trainable)})"
        ),
    )
    loss.backward()
    optimizer = torch.optim.AdamW(
        [params[name] for name in trainable], lr=_LEARNING_RATE, weight_decay=0.0
    )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    changed_frozen = [
        name
        for name, p in params.items()
        if not p.requires_grad and not torch.equal(p.detach(), before[name])
    ]
    _require(
        not changed_frozen,
        (
            f"{label}: frozen parameters (requires_grad=False) changed during a training step: "
            f"{_names(changed_frozen)}"
        ),
    )
    changed = [name for name in trainable if not torch.equal(params[name].detach(), before[name])]
    _require(
        changed,
        (
            f"{label}: one optimizer step changed none of the trainable parameters "
            f"{_names(trainable)}; do they receive gradients?"
        ),
    )
    logits_after = _logits(model, batch)

    with tempfile.TemporaryDirectory(prefix="tuneforge-check-") as tmp:
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        strategy.save(model, tokenizer, out_dir)
        files = [p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file()]
        pickled = [str(f) for f in files if f.suffix.lower() in _PICKLE_SUFFIXES]
        _require(
            not pickled,
            f"{label}.save wrote pickle-based files {pickled}; weights must be safetensors only",
        )
        _require(
            any(f.suffix == ".safetensors" for f in files),
            f"{label}.save wrote no *.safetensors file (wrote {sorted(map(str, files))})",
        )
        saved_as = [n for n in ("config.json", "adapter_config.json") if (out_dir / n).is_file()]
        _require(
            saved_as,
            f"{label}.save wrote neither a checkpoint (config.json) nor an adapter "
            f"(adapter_config.json): {sorted(map(str, files))}",
        )
        try:  # how evaluation and registration load it
            reloaded, _ = load_pretrained(out_dir)
        except ModelSourceError as exc:
            raise AssertionError(f"{label}.save output does not reload: {exc}") from None
        reloaded.to(device)
        logits_saved = _logits(reloaded, batch)

    mask = batch["attention_mask"].bool()
    moved = (logits_after - logits_before).abs()[mask].mean().item()
    off = (logits_saved - logits_after).abs()[mask].mean().item()
    _require(
        off <= max(moved / 10, 1e-5),
        (
            f"{label}: the saved model does not reproduce the trained one (mean |logit difference| "
            f"{off:.3g}, while the training step moved the logits by {moved:.3g}); does save() "
            "write the trained weights?"
        ),
    )


def _check_class(strategy_cls: type, label: str, settings: BaseModel | dict | None) -> BaseModel:
    """Checks the class attributes; returns the validated settings to build the strategy with."""
    _require(isinstance(strategy_cls, type), f"{label} is not a class")
    for attr in ("name", "description"):
        value = getattr(strategy_cls, attr, None)
        _require(
            isinstance(value, str) and value.strip(),
            f"{label}.{attr} must be a non-empty str class attribute, got {value!r}",
        )
    settings_cls = getattr(strategy_cls, "Settings", None)
    _require(
        isinstance(settings_cls, type) and issubclass(settings_cls, BaseModel),
        f"{label}.Settings must be a pydantic BaseModel subclass, got {settings_cls!r}",
    )
    if settings is None:
        data: dict[str, Any] = {}
    elif isinstance(settings, BaseModel):
        data = settings.model_dump(by_alias=True)
    else:
        data = dict(settings)
    try:
        settings_obj = settings_cls.model_validate(data)
    except ValidationError as exc:
        given = "Settings()" if settings is None else f"settings {data!r}"
        raise AssertionError(
            f"{label}.Settings rejects {given} (pass valid settings to check_strategy): {exc}"
        ) from None
    try:
        settings_cls.model_validate({**data, _UNKNOWN_KEY: 1})
    except ValidationError:
        pass
    else:
        raise AssertionError(
            f"{label}.Settings accepts unknown keys, so a typo in train.settings would be "
            "silently ignored; use model_config = ConfigDict(extra='forbid')"
        )
    return settings_obj


def _check_example(
    strategy: Any, label: str, record: dict[str, Any], tokenizer: Any, max_length: int, vocab: int
) -> Example:
    """Builds one example and checks it against what the training loop assumes."""
    where = f"{label}.build_example(row {record.get('row')})"
    example = strategy.build_example(record, tokenizer, max_length)
    _require(
        isinstance(example, Example), f"{where} returned {type(example).__name__}, not Example"
    )
    ids, labels = list(example.input_ids), list(example.labels)
    _require(
        len(ids) == len(labels),
        f"{where}: {len(ids)} input_ids but {len(labels)} labels; they must align one to one",
    )
    _require(0 < len(ids) <= max_length, f"{where}: {len(ids)} tokens, max_length is {max_length}")
    _require(
        all(isinstance(t, int) and 0 <= t < vocab for t in ids),
        f"{where}: input_ids must be ints in [0, {vocab}) (the model's vocabulary)",
    )
    mismatched = [
        i for i, (t, y) in enumerate(zip(ids, labels, strict=True)) if y not in (IGNORE_INDEX, t)
    ]
    _require(
        not mismatched,
        (
            f"{where}: labels differ from input_ids at positions {mismatched[:5]}; labels are the "
            f"input tokens (the model shifts them) or {IGNORE_INDEX}, never pre-shifted"
        ),
    )
    trained = [y for y in labels[1:] if y != IGNORE_INDEX]
    _require(
        trained,
        (
            f"{where}: no trained token (every label after the first is {IGNORE_INDEX}), so the "
            "example teaches nothing"
        ),
    )
    eos = tokenizer.eos_token_id
    if eos is not None and len(ids) < max_length:
        _require(
            ids[-1] == eos and labels[-1] == eos,
            (
                f"{where}: the example does not end with a trained end-of-sequence token {eos} "
                "although it was not truncated; a model that never learns to stop rambles past "
                "its answer"
            ),
        )
    return example


def _logits(model: Any, batch: dict[str, Any]) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _require(condition: object, message: str) -> None:
    """`assert` that survives `python -O`: a conformance check must never be skipped."""
    if not condition:
        raise AssertionError(message)
