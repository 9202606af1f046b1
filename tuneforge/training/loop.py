"""The training loop every strategy shares: `train_model`, one `TrainingRun`'s steps.

The loop owns the optimizer (AdamW over exactly the parameters the strategy left trainable),
linear warmup and decay, gradient clipping, dynamic padding and metric logging. What is
specific to a strategy (which weights train, how a record becomes labels, what is saved) comes
from the strategy object, found by name among the `tuneforge.strategies` entry points.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tuneforge import lineage
from tuneforge.batching import IGNORE_INDEX, Example, MaskAudit, audit_examples, collate, pack
from tuneforge.config import TrainConfig
from tuneforge.jsonl import gc_paused, write_jsonl
from tuneforge.models import load_pretrained, pick_device
from tuneforge.plugins.discovery import strategy_info
from tuneforge.plugins.strategy import build_examples
from tuneforge.plugins.tokenization import check_chat_template, tokenize_text_blocks
from tuneforge.prompts import end_of_turn_id
from tuneforge.records import assistant_turn_records, is_text, spread
from tuneforge.training import checkpoint, padding_free, parallel, token_cache
from tuneforge.training.best_step import BestStep
from tuneforge.training.chunked_head import chunk_unsupported
from tuneforge.training.losses import token_mean_loss
from tuneforge.training.preference import PreferenceObjective

MetricsCallback = Callable[[int, dict[str, float]], None]
# Records per `build_examples` call: one call tokenizes a batch at once (a fast tokenizer in
# parallel); a batch's examples are in memory together.
BUILD_BATCH = 10_000


@dataclass(frozen=True)
class TrainResult:
    model_dir: str
    steps: int
    examples: int
    real_tokens: int  # non-padding tokens processed, summed over all steps
    trained_tokens: int  # tokens that carried loss, summed over all steps
    seconds: float
    final_loss: float
    best_step: int  # the step whose weights were saved (the last one without periodic eval)
    trainable_parameters: int
    total_parameters: int
    audit: MaskAudit
    resumed_from_step: int = 0  # the checkpoint this attempt continued from (0: from scratch)
    # "padding-free", or "padded: <why>" (see padding_free.py)
    batches: str = "padded"
    # The periodic-evaluation scores of `best_step` (`exact_match`, `eval_loss`); empty without
    # periodic evaluation.
    best_scores: dict[str, float] = field(default_factory=dict)
    # Peak memory of the training process: resident set size (whole process, loading
    # included) and, on a GPU, what torch allocated at most. MiB.
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float = 0.0
    # Preference strategies: seconds spent computing the reference's log-probabilities before
    # the first step (full weights; not in `seconds`), and rows left out as too long.
    reference_seconds: float = 0.0
    too_long: int = 0
    # The tokenized examples: "reused" from the token cache, "built" into it, or "off".
    token_cache: str = "off"

    def _preference_metrics(self) -> dict[str, float]:
        figures = {
            "train.reference_seconds": self.reference_seconds,
            "train.too_long": self.too_long,
        }
        return {k: v for k, v in figures.items() if v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Rebuilds a result that crossed a process boundary as JSON."""
        return cls(**{**data, "audit": MaskAudit(**data["audit"])})

    @property
    def tokens_per_second(self) -> float:
        """Real (non-padding) tokens per second: what the hardware actually processed."""
        return self.real_tokens / self.seconds if self.seconds else 0.0

    def summary_metrics(self) -> dict[str, float]:
        """The run's totals as MLflow metrics (`train.*`, the loss-mask audit as `audit.*`)."""
        return {
            "train.seconds": self.seconds,
            "train.real_tokens": self.real_tokens,
            "train.trained_tokens": self.trained_tokens,
            "train.mean_tokens_per_second": self.tokens_per_second,
            "train.trainable_parameters": self.trainable_parameters,
            "train.total_parameters": self.total_parameters,
            "train.trainable_fraction": self.trainable_parameters / self.total_parameters,
            "train.resumed_from_step": self.resumed_from_step,
            "train.peak_rss_mb": self.peak_rss_mb,
            **self._preference_metrics(),
            **({"train.peak_cuda_mb": self.peak_cuda_mb} if self.peak_cuda_mb else {}),
            **{f"audit.{k}": v for k, v in asdict(self.audit).items()},
        }


def batch_order(
    n: int, batch_size: int, steps: int, seed: int, lengths: list[int] | None = None
) -> list[list[int]]:
    """Indices for `steps` batches: a fresh shuffle each epoch, deterministic for a seed.

    With `lengths`, each epoch's shuffled examples are cut into windows of 50 batches, sorted by
    length inside a window, and batched; the batches are then shuffled again. Batches hold
    examples of similar length (little padding) while their order stays random.
    """
    generator = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=generator).tolist()
        epoch: list[list[int]] = []
        if lengths is not None:
            window = batch_size * 50
            perm = [
                i
                for start in range(0, n, window)
                for i in sorted(perm[start : start + window], key=lambda k: lengths[k])
            ]
        for start in range(0, n, batch_size):
            chunk = perm[start : start + batch_size]
            if len(chunk) == batch_size or n < batch_size:
                epoch.append(chunk)
        if lengths is not None:
            order = torch.randperm(len(epoch), generator=generator).tolist()
            epoch = [epoch[i] for i in order]
        batches += epoch[: steps - len(batches)]
    return batches


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    warmup = min(warmup, total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _progress(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  {task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
        disable=not (enabled and sys.stderr.isatty()),
        transient=False,
    )


def float32_trainable(model: Any) -> Any:
    """Makes every trainable parameter float32, whatever the base loaded in (`model.dtype`):
    AdamW steps on bfloat16 weights round away updates below their precision. Frozen
    parameters stay as loaded."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak resident set size and, on CUDA, peak allocated memory, in MiB."""
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"peak_rss_mb": rss, "peak_cuda_mb": cuda}


def train_model(
    base_dir: str | Path,
    records: Iterable[dict[str, Any]],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    on_metrics: MetricsCallback | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    eval_records: list[dict[str, Any]] | None = None,
    checkpoint_dir: str | Path | None = None,
    token_cache_dir: str | Path | None = None,
) -> TrainResult:
    """Trains from `base_dir` (loaded in `dtype`, `model.dtype`) on validated `records` and
    saves the result to `out_dir`. `records` is a list, or what reads them again on each pass
    (`JsonlRecords` of the split's file): with the token cache, prompt/response records are
    then never all in memory.

    With `cfg.eval_every` and `eval_records`, the saved weights are those of the step with the
    best exact match on (the first `cfg.eval_examples` of) `eval_records`.

    With `checkpoint_dir` and `cfg.checkpoint_every`, a checkpoint is written there every that
    many steps, and a matching one found at start is resumed (see `checkpoint.py`); they
    are deleted once the result is saved.

    With `token_cache_dir`, prompt/response examples are tokenized once into memory-mapped
    Arrow there and reused by a later run on the same records, tokenizer and settings
    (`token_cache.py`; `TrainResult.token_cache` says which).

    Under torch.distributed (see `worker.py`) every rank runs this with the
    same arguments: each takes its shard of every global batch, the model is wrapped in DDP or
    FSDP (`cfg.parallel`), and rank 0 alone logs, evaluates and saves.
    """
    if iter(records) is records:  # a one-pass iterator: held, since setup reads it twice
        records = list(records)
    run = TrainingRun(cfg, base_dir, trust_remote_code, on_metrics, dtype)
    run.token_cache = Path(token_cache_dir) if token_cache_dir else None
    run.setup(records, eval_records or [])
    run.resume(checkpoint_dir, records)
    run.train()
    return run.save(Path(out_dir))


class StrategyError(ValueError):
    """A tuning strategy failed (raised, or broke the contract the loop relies on). One line
    that names the strategy and its distribution; a ValueError, so it is not retried."""


class TrainingRun:
    """One training run, as the steps a reader follows: `setup` (strategy, model, examples,
    batches, optimizer, periodic evaluation), `resume` (from a checkpoint), `train` (the
    loop), `save` (the model, its result, then the checkpoints go)."""

    def __init__(
        self,
        cfg: TrainConfig,
        base_dir: str | Path,
        trust_remote_code: bool,
        on_metrics: MetricsCallback | None,
        dtype: str = "float32",
    ) -> None:
        self.cfg, self.base_dir, self.trust_remote_code = cfg, base_dir, trust_remote_code
        self.dtype = dtype
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world = torch.distributed.get_world_size() if self.distributed else 1
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.lead = self.rank == 0  # the one process that logs, evaluates and saves
        self.on_metrics = on_metrics if self.lead else None
        self.info = strategy_info(cfg.strategy)
        self.token_cache: Path | None = None  # where tokenized examples are kept (train_model)
        self.cache_state = "off"
        self.step_stats: dict[str, float] = {}  # a preference step's logged figures
        self.data_digest: str | None = None  # the training records' hash, once computed

    # Setup ------------------------------------------------------------------------------

    def setup(self, records: Iterable[dict[str, Any]], eval_records: list[dict[str, Any]]) -> None:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        with self._blame("building it"):
            self.strategy = self.info.cls(cfg.strategy_settings())
        self._setup_model()
        self.objective: PreferenceObjective | None = None
        with gc_paused():  # a million records make a million examples
            self._setup_examples(records)
        self._setup_batches()
        self._setup_reference()
        self._setup_optimizer()
        answers = [r for r in eval_records if r.get("label", True)]  # feedback: good ones
        held_back = spread(answers, cfg.eval_examples) if self.lead else []
        self.best = BestStep(held_back, self.tokenizer, cfg.eval_every, cfg.max_length)

    def _setup_model(self) -> None:
        device = pick_device()
        if device.type == "cuda" and self.distributed:
            # This node's processes share its GPUs (torchrun's LOCAL_RANK), one each.
            local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)  # FSDP and NCCL use the current device
        self.device = device
        model, self.tokenizer = self._load_base()
        with self._blame("prepare_model"):
            model = self.strategy.prepare_model(model)
        float32_trainable(model)
        if self.cfg.gradient_checkpointing:
            # Non-reentrant: works with frozen inputs (adapters) and needs no input grads.
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.to(device).train()
        self.model = model
        self.core = model  # unwrapped: what strategies save and evaluation scores

    def _load_base(self) -> tuple[Any, Any]:
        """The base in `model.dtype`, with the strategy's own load options (QLoRA's 4 bits)."""
        with self._blame("load_options"):
            options = self.strategy.load_options(self.dtype)
        if "quantization_config" in options:  # quantized layers are placed as they load
            options.setdefault("device_map", {"": self.device})
        return load_pretrained(self.base_dir, self.trust_remote_code, self.dtype, **options)

    def _setup_examples(self, records: Iterable[dict[str, Any]]) -> None:
        cfg, tokenizer = self.cfg, self.tokenizer
        self.rows: list[list[int]] | None = None  # packed rows (or units) of example indices
        first = next(iter(records), None)
        if first is not None and is_text(first):  # a file has one schema: then every record
            self._setup_text_examples(list(records))
            return
        kind = preference_kind([first] if first is not None else [])
        if kind or self.strategy.capabilities.preference:
            self._setup_preference_examples(list(records), kind)
            return
        if not self.strategy.capabilities.chat:
            raise ValueError(
                f"{self.info.label} trains on raw text (data.schema text), and these are "
                "prompt/response records; use full or instruction for those"
            )
        check_chat_template(tokenizer)
        if self.token_cache is not None:
            self._digest(records)  # of the records as given, before they are split in turns
        if cfg.assistant_turns == "all":
            records = (turn for r in records for turn in assistant_turn_records(r))
        end = end_of_turn_id(tokenizer)

        def build(records: Iterable[dict[str, Any]]) -> Iterator[tuple[int, Example]]:
            """(row, example) pairs, the records read and tokenized a batch at a time."""
            unread = iter(records)
            while batch := list(islice(unread, BUILD_BATCH)):  # reading it is not the strategy's
                with self._blame("build_example"):
                    examples = build_examples(self.strategy, batch, tokenizer, cfg.max_length)
                yield from zip((r["row"] for r in batch), examples, strict=True)

        def audit(examples: list[Example], rows: list[int]) -> MaskAudit:
            with self._blame("the loss-mask audit"):
                return audit_examples(examples, rows, end, cfg.max_length)

        if self.token_cache is not None:
            self._cached_examples(records, build, audit)
        else:
            pairs = list(build(records))
            self.examples = [example for _, example in pairs]
            self.audit = audit(self.examples, [row for row, _ in pairs])
        if self.audit.truncated:
            # A truncated example loses its end-of-sequence token (and, for response-only
            # strategies, possibly its answer): the model would learn to ramble or to stop mid-way.
            raise ValueError(
                f"{self.audit.truncated} of {self.audit.examples} examples are longer than "
                f"train.max_length={cfg.max_length} tokens; raise train.max_length or quarantine "
                "long rows with a lower data.max_chars"
            )

    def _cached_examples(
        self,
        records: Iterable[dict[str, Any]],
        build: Callable[[Iterable[dict[str, Any]]], Iterator[tuple[int, Example]]],
        audit: Callable[[list[Example], list[int]], MaskAudit],
    ) -> None:
        """The examples from the token cache, built into it first (`build`, checked by `audit`)
        when it has none for these records, this tokenizer and these settings."""
        assert self.token_cache is not None
        cfg = self.cfg
        shaping = {
            "strategy": cfg.strategy,
            "settings": cfg.strategy_settings().model_dump(mode="json"),
            "max_length": cfg.max_length,
            "assistant_turns": cfg.assistant_turns,
        }
        # The records before train.assistant_turns splits them (the setting is in `shaping`).
        key = token_cache.cache_key(self._digest(records), self.tokenizer, shaping)

        cached = token_cache.load_or_build(self.token_cache, key, lambda: build(records), audit)
        self.examples, self.audit = cached.examples, cached.audit
        self.cache_state = "reused" if cached.hit else "built"

    def _digest(self, records: Iterable[dict[str, Any]]) -> str:
        """The training records' hash (the token cache's and the checkpoints' key), computed
        once: at a million rows it takes seconds."""
        if self.data_digest is None:
            self.data_digest = checkpoint.records_digest(records)
        return self.data_digest

    def _setup_preference_examples(self, records: list[dict[str, Any]], kind: str | None) -> None:
        """Preference pairs or feedback, for a strategy that trains them: two examples a unit
        (`preference.py`), a batch `batch_size` units."""
        trains = self.strategy.capabilities
        if kind is None or not getattr(trains, kind):
            data = {
                "pairs": "preference pairs (data.schema preference)",
                "feedback": "good/bad feedback (data.schema feedback)",
                None: "prompt/response records",
            }
            wants = "pairs" if trains.pairs else "feedback" if trains.feedback else None
            use = {"pairs": "dpo or simpo", "feedback": "kto", None: "full, instruction or lora"}
            raise ValueError(
                f"{self.info.label} trains on {data[wants]}, and these rows are {data[kind]}; "
                f"use {use[kind]} for those"
            )
        check_chat_template(self.tokenizer)
        # No dropout (TRL's default too): with it the trained model would differ from the
        # reference by noise alone, and the log-ratios the loss reads would be noise at step 1.
        for module in self.core.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0  # transformers' attention takes a rate
        with self._blame("build_example"):
            objective = PreferenceObjective(
                self.strategy, records, self.tokenizer, self.cfg.max_length
            )
        self.objective, self.examples, self.rows = objective, objective.examples, objective.units
        self.audit = objective.audit

    def _setup_reference(self) -> None:
        """Full-weight preference training: the reference's log-probabilities, from the base,
        before a checkpoint is resumed or a step taken."""
        if self.objective is None:
            return
        swapped = padding_free.attention(self.core) if self.flat else nullcontext()
        with swapped:
            self.objective.precompute_reference(self.core, self._collate, self.device)

    def _setup_text_examples(self, records: list[dict[str, Any]]) -> None:
        """Raw text: causal-LM loss on every token, each document split into
        `train.max_length` blocks (nothing cut off), for strategies that say they train text."""
        if not self.strategy.capabilities.text:
            raise ValueError(
                f"{self.info.label} trains on prompt/response pairs, and raw text (data.schema "
                "text) has none; use full or lora, or a strategy whose capabilities say text"
            )
        cfg, tokenizer = self.cfg, self.tokenizer
        self.examples, rows = [], []
        for r in records:
            blocks = tokenize_text_blocks(r, tokenizer, cfg.max_length)
            self.examples += blocks
            rows += [r["row"]] * len(blocks)
        trained = sum(e.trained_tokens for e in self.examples)
        total = sum(len(e.input_ids) for e in self.examples)
        # Blocks are cut on purpose: none counts as truncated.
        self.audit = MaskAudit(len(self.examples), 0, trained, total - trained)
        if self.strategy.capabilities.packs_text:  # a batch is batch_size full rows
            lengths = [len(e.input_ids) for e in self.examples]
            self.rows = pack(lengths, cfg.max_length)

    def _setup_batches(self) -> None:
        cfg, examples = self.cfg, self.examples
        if isinstance(examples, token_cache.ArrowExamples):  # counted once, when written
            self.example_lengths = examples.lengths.tolist()
            trained = examples.trained.tolist()
        else:
            self.example_lengths = [len(e.input_ids) for e in examples]
            trained = [sum(y != IGNORE_INDEX for y in e.labels[1:]) for e in examples]
        self.lengths = self.example_lengths if cfg.group_by_length else None
        self.why_padded = (
            padding_free.unsupported_reason(self.core, cfg.max_length)
            if cfg.padding_free
            else "train.padding_free is off"
        )
        self.flat = self.why_padded is None
        self.row_multiple = padding_free.row_multiple(cfg.precision)
        self.slim = padding_free.takes_logits_to_keep(self.core)
        # The decoder is called past the DDP/FSDP wrapper there: one process only.
        chunkable = self.world == 1 and chunk_unsupported(self.core) is None
        self.chunk = cfg.loss_chunk_tokens if chunkable else 0
        self.trained_per_example = trained
        if self.objective is not None and self.objective.feedback:
            # A feedback unit's second answer (another row's, for KTO's KL estimate) is scored,
            # not trained: no gradient reaches the model through it.
            self.trained_per_example[1::2] = [0] * (len(examples) // 2)

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        if self.world > 1:  # before the optimizer: FSDP replaces the parameters with sharded ones
            self.model = parallel.wrap(self.model, cfg.parallel)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise StrategyError(f"{self.info.label}: prepare_model left no parameter trainable")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True
        )  # fused AdamW exists for CPU and CUDA tensors alike
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(cfg.warmup_steps, cfg.steps)
        )

    # Resume -----------------------------------------------------------------------------

    def resume(self, checkpoint_dir: str | Path | None, records: Iterable[dict[str, Any]]) -> None:
        """Continues from a matching checkpoint in `checkpoint_dir`, if there is one."""
        cfg = self.cfg
        self.root = Path(checkpoint_dir) if checkpoint_dir and cfg.checkpoint_every else None
        self.key = (
            checkpoint.ResumeKey.of(self._digest(records), self.base_dir, cfg)
            if self.root
            else None
        )
        self.state = checkpoint.LoopState()
        if self.root and self.key:
            found = _find_resumable(self.root, self.key, cfg.resume, self.lead, self.distributed)
            if found:
                self.state, best_weights = checkpoint.load_checkpoint(
                    found, self.core, self.optimizer, self.scheduler
                )
                state = self.state
                self.best.resume(state.best_step, state.best_score, state.best_loss, best_weights)
        self.resumed_from = self.state.step

    # The loop ---------------------------------------------------------------------------

    def train(self) -> None:
        cfg, state = self.cfg, self.state
        earlier_seconds = state.seconds
        self.started = time.perf_counter()
        self.paused = 0.0  # evaluation and checkpoint writing: kept out of tokens/s
        self.window_tokens, self.window_start = 0, self.started
        swapped = padding_free.attention(self.core) if self.flat else nullcontext()
        order = self._batch_order()
        with _progress(enabled=self.lead) as bar, swapped:
            self.bar = bar
            self.progress = bar.add_task("train", total=cfg.steps, loss=state.loss, tps=0.0)
            bar.update(self.progress, completed=self.resumed_from)
            for step, indices in enumerate(order, start=1):
                if step <= self.resumed_from:  # the checkpoint's RNG and optimizer include it
                    continue
                loss_value, grad_norm = self._step(indices)
                tokens = sum(self.example_lengths[i] for i in indices)  # global batch
                self.window_tokens += tokens
                state.step, state.loss = step, loss_value
                state.real_tokens += tokens
                state.trained_tokens += sum(self.trained_per_example[i] for i in indices)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    self._log(step, loss_value, grad_norm)
                if self.best.due(step, last=step == cfg.steps):
                    self._paused(self._evaluate, step)
                if self._checkpoint_due(step):
                    self._paused(self._checkpoint, earlier_seconds)
                bar.advance(self.progress)
        self.seconds = earlier_seconds + time.perf_counter() - self.started - self.paused

    def _batch_order(self) -> list[list[int]]:
        """Example indices per step: `batch_size` examples, or with packed rows (`packs_text`)
        the blocks of `batch_size` rows."""
        cfg = self.cfg
        if self.rows is None:
            n, lengths = len(self.examples), self.lengths
            return batch_order(n, cfg.batch_size, cfg.steps, cfg.seed, lengths)
        rows = batch_order(len(self.rows), cfg.batch_size, cfg.steps, cfg.seed)
        return [[i for r in batch for i in self.rows[r]] for batch in rows]

    def _collate(self, examples: list[Example]) -> dict[str, Any]:
        """A batch as the model trains on it: one padding-free row, else padded."""
        pad = self.tokenizer.pad_token_id
        if self.flat:
            return padding_free.collate_flat(examples, self.row_multiple, pad)
        return collate(examples, pad)

    def _step(self, indices: list[int]) -> tuple[float, Any]:
        """One optimizer step on this process's shard of the global batch `indices`."""
        cfg = self.cfg
        with torch.autocast(self.device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
            if self.objective is not None:
                loss, loss_value = self._preference_loss(indices)
            else:
                chosen = [self.examples[i] for i in indices[self.rank :: self.world]]
                batch = self._collate(chosen)
                batch = {
                    k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()
                }
                loss, loss_value = token_mean_loss(
                    self.model, batch, self.world, self.slim, self.chunk
                )
        loss.backward()  # outside autocast, as PyTorch recommends
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm

    def _preference_loss(self, indices: list[int]) -> tuple[torch.Tensor, float]:
        """The step's preference loss; `indices` are its units' examples, two by two."""
        assert self.objective is not None
        units = [indices[k] // 2 for k in range(0, len(indices), 2)]
        with self._blame("loss"):
            loss, value, stats = self.objective.step_loss(
                self.model,
                self.core,
                units[self.rank :: self.world],
                len(units),
                self._collate,
                self.device,
                self.world,
            )
        self.step_stats = stats
        return loss, value

    def _log(self, step: int, loss_value: float, grad_norm: Any) -> None:
        now = time.perf_counter()
        tps = self.window_tokens / (now - self.window_start)
        self.window_tokens, self.window_start = 0, now
        self.bar.update(self.progress, loss=loss_value, tps=tps)
        if self.on_metrics:
            self.on_metrics(
                step,
                {
                    lineage.TRAIN_LOSS: loss_value,
                    "train.learning_rate": self.scheduler.get_last_lr()[0],
                    "train.grad_norm": float(grad_norm),
                    "train.tokens_per_second": tps,
                    **self.step_stats,
                },
            )

    def _paused(self, work: Callable[..., None], *args: Any) -> None:
        """Runs `work(*args)` with its time kept out of the training time and tokens/s."""
        pause = time.perf_counter()
        work(*args)
        self.window_start = time.perf_counter()
        self.paused += self.window_start - pause

    def _evaluate(self, step: int) -> None:
        scores = self.best.evaluate(self.core, step)
        if self.on_metrics:
            self.on_metrics(step, scores)

    def _checkpoint_due(self, step: int) -> bool:
        every = self.cfg.checkpoint_every
        return bool(self.root and self.key and self.lead and step % every == 0) and (
            step < self.cfg.steps
        )

    def _checkpoint(self, earlier_seconds: float) -> None:
        state = self.state
        best = self.best
        state.best_step, state.best_score, state.best_loss = (
            best.best_step,
            best.best_score,
            best.best_loss,
        )
        state.seconds = earlier_seconds + time.perf_counter() - self.started - self.paused
        checkpoint.save_checkpoint(
            self.root,
            self.key,
            state,
            self.core,
            self.optimizer,
            self.scheduler,
            self.best.weights,
            self.cfg.keep_checkpoints,
        )

    # Save -------------------------------------------------------------------------------

    def save(self, out_dir: Path) -> TrainResult:
        """Saves the best step's weights through the strategy, then the result beside them,
        then deletes the checkpoints (in that order: a crash leaves one or the other)."""
        cfg, core = self.cfg, self.core
        self.best.restore(core)
        core.eval()
        full = parallel.full_state_dict(core, cfg.parallel) if self.world > 1 else None
        if self.lead:
            if full is not None:  # FSDP: put the gathered weights into an unsharded copy
                core, _ = self._load_base()
                core = float32_trainable(self.strategy.prepare_model(core))
                core.load_state_dict(full)
            out_dir.mkdir(parents=True, exist_ok=True)
            with self._blame("save"):
                self.strategy.save(core.to("cpu"), self.tokenizer, out_dir)
        state = self.state
        result = TrainResult(
            model_dir=str(out_dir),
            steps=cfg.steps,
            examples=len(self.examples),
            real_tokens=state.real_tokens,
            trained_tokens=state.trained_tokens,
            seconds=self.seconds,
            final_loss=state.loss,
            best_step=self.best.best_step or cfg.steps,
            best_scores=self._best_scores(),
            trainable_parameters=sum(p.numel() for p in self.params),
            total_parameters=sum(p.numel() for p in core.parameters()),
            audit=self.audit,
            resumed_from_step=self.resumed_from,
            batches="padding-free" if self.flat else f"padded: {self.why_padded}",
            **peak_memory(self.device),
            **self._preference_figures(),
            token_cache=self.cache_state,
        )
        if self.lead:
            if self.objective is not None and self.objective.too_long:
                write_jsonl(self.objective.too_long, too_long_path(out_dir))
            checkpoint.write_json_atomically(result_path(out_dir), asdict(result))
            if self.root:
                checkpoint.clear_checkpoints(self.root)
        return result

    def _preference_figures(self) -> dict[str, Any]:
        objective = self.objective
        if objective is None:
            return {}
        too_long = len(objective.too_long)
        return {"reference_seconds": objective.reference_seconds, "too_long": too_long}

    def _best_scores(self) -> dict[str, float]:
        """The kept step's periodic-evaluation scores (empty without periodic evaluation)."""
        best = self.best
        if not best.best_step:
            return {}
        scores = {"eval_loss": best.best_loss}
        return scores | ({"exact_match": best.best_score} if best.chat else {})

    @contextmanager
    def _blame(self, what: str) -> Iterator[None]:
        """Turns a failure inside the strategy into one `StrategyError` line naming it."""
        try:
            yield
        except StrategyError:
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()
            detail = text[0].rstrip(".") if text else ""
            kind = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
            raise StrategyError(
                f"{self.info.label}: {what}: {kind}{detail}; a plugin's own tests catch this "
                "with tuneforge.plugins.testing.check_strategy"
            ) from exc


def result_path(out_dir: str | Path) -> Path:
    """Where a finished training run's `TrainResult` is kept, beside its saved model."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.result.json")


def too_long_path(out_dir: str | Path) -> Path:
    """Where a preference run's rows left out as too long are listed (quarantine entries)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.too_long.jsonl")


def preference_kind(records: list[dict[str, Any]]) -> str | None:
    """ "pairs" or "feedback" when the records are preference data (a file has one schema:
    the first record tells), else None."""
    if not records:
        return None
    return "pairs" if "rejected" in records[0] else "feedback" if "label" in records[0] else None


def finished_result(out_dir: str | Path) -> TrainResult | None:
    """The result of a training run that already saved its model to `out_dir`, if any."""
    path = result_path(out_dir)
    return TrainResult.from_dict(json.loads(path.read_text())) if path.exists() else None


def _find_resumable(
    root: Path, key: checkpoint.ResumeKey, resume: str, lead: bool, distributed: bool
) -> Path | None:
    """The checkpoint to resume from. Rank 0 clears leftovers (and, with resume=never, old
    checkpoints) before the other ranks look, so all ranks see the same directory."""
    found = checkpoint.find_resumable(root, key, resume) if lead else None
    if distributed:
        torch.distributed.barrier()
        if not lead:
            found = checkpoint.find_resumable(root, key, "auto")
    return found
