"""Serving: tuneforge's OpenAI-compatible server against MLflow's scoring server, same model,
same requests, on this machine.

    .venv/bin/python -m benchmarks.serving            # ~5 min on 2 idle cores
    .venv/bin/python -m benchmarks.serving --quick    # a smoke run: 1 and 4 clients, 2 requests

Two models: the tiny demo-sized Llama (2 layers, hidden 64, trained 150 steps as the tests
train it) and a Qwen2-shaped model (2 layers, hidden 256, grouped-query attention, random
weights; the tiny model's tokenizer with ChatML added). For each, 1, 4 and 16 clients at once
each send the same 8 chat requests one after another (max_tokens 32), to:

- tuneforge, streaming: `tuneforge.openai_server.serve` (what `tuneforge serve` runs) in its own
  process, through the official `openai` client; first-token time is the first content chunk.
  It computes with all cores but one (1 torch thread on 2 cores), its default.
- tuneforge, not streaming: the same server; waiting requests are answered in one batch.
- MLflow's scoring server: `mlflow models serve --env-manager local --workers 1` over the same
  checkpoint packaged as tuneforge registers it, `POST /invocations`. It has no streaming, so its
  first-token time is its whole-answer time.

Completion tokens are the tokens the model generated for each answer (the end of turn
included), as tuneforge's `usage` reports them on a reference pass before measuring: every
server answers greedily from the same weights, and an answer unlike the reference is counted
(and reported). Each configuration runs 3 times; the run of median wall time is reported.
Waits for the load average to fall below 1.5 before starting each server.
Writes benchmarks/results/serving.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import load_average, wait_for_idle

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
MAX_TOKENS = 32
REPEATS = 3
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # `mlflow models serve` starts `uvicorn` by name: the venv's bin must be on PATH.
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


def build_models(root: Path) -> dict[str, Path]:
    """The two checkpoints, built here (no download)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tuneforge.config import TrainConfig
    from tuneforge.plugins.testing import sample_records, tiny_checkpoint
    from tuneforge.training.loop import train_model

    base = tiny_checkpoint(root / "tiny-base")
    config = TrainConfig(steps=150, batch_size=16, max_length=64, eval_every=0, checkpoint_every=0)
    tiny = Path(train_model(base, sample_records(400), config, root / "tiny-llama").model_dir)

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token, tokenizer.chat_template = "<|im_end|>", CHATML
    qwen_config = Qwen2Config(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=512,
        vocab_size=len(tokenizer),  # every id it can emit decodes to text
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    qwen = root / "qwen2-2layer"
    Qwen2ForCausalLM(qwen_config).save_pretrained(qwen)
    tokenizer.save_pretrained(qwen)
    return {"tiny-llama": tiny, "qwen2-2layer": qwen}


def questions(n: int) -> list[list[dict[str, str]]]:
    """The first `n` prompts (chat turns) of tuneforge's bundled data: six task families."""
    from tuneforge.plugins.testing import sample_records
    from tuneforge.prompts import split_turns

    return [split_turns(r)[0] for r in sample_records(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server did not answer {url} in {timeout_s} s: {log.read_text()[-2000:]}")


def start_tuneforge(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    code = (
        "from tuneforge.openai_server import serve; "
        f"serve({str(model_dir)!r}, port={port}, max_new_tokens={MAX_TOKENS})"
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=ENV, stdout=out, stderr=subprocess.STDOUT
        )
    wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc, log)
    return proc


def start_mlflow(model_dir: Path, port: int, work: Path, log: Path) -> subprocess.Popen:
    from tuneforge.packaging import ModelPackage, save_package

    package = work / f"pyfunc-{model_dir.name}"
    save_package(
        model_dir,
        ModelPackage(None, "float32", MAX_TOKENS, False),
        package,
        work / f"tmp-{model_dir.name}",
    )
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", str(package)),
        *("--env-manager", "local", "-p", str(port), "--host", "127.0.0.1", "--workers", "1"),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    wait_until_up(f"http://127.0.0.1:{port}/ping", proc, log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Target:
    """One way of asking a server: `ask(turns)` returns (answer, seconds to the first token)."""

    name = ""

    def ask(self, turns: list[dict[str, str]]) -> tuple[str, float]:
        raise NotImplementedError


class TuneforgeStream(Target):
    name = "tuneforge (stream)"

    def __init__(self, port: int, model_id: str) -> None:
        import openai

        self.model_id = model_id
        self.client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600
        )

    def ask(self, turns: list[dict[str, str]]) -> tuple[str, float]:
        start, first, text = time.perf_counter(), None, ""
        stream = self.client.chat.completions.create(
            model=self.model_id, messages=turns, max_tokens=MAX_TOKENS, stream=True
        )
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    first = first or time.perf_counter()
                    text += choice.delta.content
        end = time.perf_counter()
        return text, (first or end) - start  # an empty answer: its first token is its end


class TuneforgeWhole(TuneforgeStream):
    name = "tuneforge (no stream)"

    def ask(self, turns: list[dict[str, str]]) -> tuple[str, float]:
        start = time.perf_counter()
        answer = self.client.chat.completions.create(
            model=self.model_id, messages=turns, max_tokens=MAX_TOKENS
        )
        return answer.choices[0].message.content or "", time.perf_counter() - start


class MlflowScoring(Target):
    name = "mlflow models serve"

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/invocations"
        self.client = httpx.Client(timeout=600)

    def ask(self, turns: list[dict[str, str]]) -> tuple[str, float]:
        start = time.perf_counter()
        body = {"inputs": [{"messages": turns}], "params": {"max_new_tokens": MAX_TOKENS}}
        response = self.client.post(self.url, json=body)
        response.raise_for_status()
        return response.json()["predictions"][0], time.perf_counter() - start


@dataclass
class Reference:
    """Each prompt's answer, and how many tokens the model generated for it (the end of turn
    included): tuneforge's `usage`, asked once before measuring. Every server answers greedily
    from the same weights, so an answer equal to the reference cost the same tokens."""

    texts: list[str]
    tokens: list[int]


def reference_answers(port: int, model_id: str, prompts: list[Any]) -> Reference:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    texts, tokens = [], []
    for turns in prompts:
        answer = client.chat.completions.create(
            model=model_id, messages=turns, max_tokens=MAX_TOKENS
        )
        texts.append(answer.choices[0].message.content or "")
        tokens.append(answer.usage.completion_tokens)
    return Reference(texts, tokens)


def measure(
    make_target: Any, clients: int, prompts: list[Any], reference: Reference, tokenizer: Any
) -> dict[str, Any]:
    """`clients` threads at once, each sending every prompt in turn, and the figures."""
    targets = [make_target() for _ in range(clients)]
    answered: list[tuple[int, str, float]] = []  # (prompt, answer, seconds to first token)
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        barrier.wait()
        for j, turns in enumerate(prompts):
            try:
                text, first = targets[i].ask(turns)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            answered.append((j, text, first))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    load = load_average()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    # An answer unlike the reference (none expected) is counted by re-tokenizing it.
    differ = [(j, text) for j, text, _ in answered if text != reference.texts[j]]
    tokens = sum(reference.tokens[j] for j, _, _ in answered) + sum(
        len(tokenizer(text, add_special_tokens=False).input_ids) - reference.tokens[j]
        for j, text in differ
    )
    firsts = sorted(first for _, _, first in answered)
    p90 = firsts[min(len(firsts) - 1, int(0.9 * len(firsts)))] if firsts else None
    return {
        "clients": clients,
        "requests": clients * len(prompts),
        "answered": len(answered),
        "errors": len(errors),
        "first_errors": errors[:3],
        "answers_unlike_reference": len(differ),
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "first_token_median_s": round(statistics.median(firsts), 4) if firsts else None,
        "first_token_p90_s": round(p90, 4) if p90 is not None else None,
        "load_average_before": load,
    }


def bench_model(
    name: str, model_dir: Path, work: Path, clients: list[int], prompts: list[Any], idle: float
) -> tuple[list[dict[str, Any]], Reference]:
    """Every configuration for one model: tuneforge streaming and not, then MLflow's server
    (each started once the load average is below `idle`); each measured `REPEATS` times, the
    run of median wall time reported."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows: list[dict[str, Any]] = []

    def run(target_name: str, make: Any) -> None:
        make().ask(prompts[0])  # warm-up: the first generate call pays one-time costs
        for n in clients:
            runs = [measure(make, n, prompts, reference, tokenizer) for _ in range(REPEATS)]
            figures = sorted(runs, key=lambda r: r["wall_s"])[REPEATS // 2]  # the median run
            figures["wall_s_runs"] = [r["wall_s"] for r in runs]
            rows.append({"model": name, "server": target_name, **figures})
            print(json.dumps(rows[-1]), flush=True)

    # Waits between servers, not between measurements: the benchmark's own load would stall it.
    wait_for_idle(threshold=idle, poll_s=15, limit_s=900)
    port = free_port()
    server = start_tuneforge(model_dir, port, work / f"tuneforge-{name}.log")
    try:
        model_id = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"]
        reference = reference_answers(port, model_id, prompts)
        for target_cls in (TuneforgeStream, TuneforgeWhole):
            run(target_cls.name, lambda cls=target_cls: cls(port, model_id))
    finally:
        stop(server)
    wait_for_idle(threshold=idle, poll_s=15, limit_s=900)
    port = free_port()
    server = start_mlflow(model_dir, port, work, work / f"mlflow-{name}.log")
    try:
        run(MlflowScoring.name, lambda: MlflowScoring(port))
    finally:
        stop(server)
    return rows, reference


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | server | clients | requests | tokens | wall s | tokens/s "
        "| first token median s | first token p90 s | errors | unlike reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " *" if r["server"] == MlflowScoring.name else ""
        lines.append(
            f"| {r['model']} | {r['server']} | {r['clients']} | {r['requests']} "
            f"| {r['completion_tokens']} | {r['wall_s']:.2f} | {r['tokens_per_s']:.0f} "
            f"| {r['first_token_median_s']}{mark} | {r['first_token_p90_s']}{mark} "
            f"| {r['errors']} | {r['answers_unlike_reference']} |"
        )
    lines.append("")
    lines.append(
        "\\* MLflow's scoring server has no streaming: its first-token time is the whole answer's."
        " tuneforge (no stream) likewise reports whole-answer time."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 clients, 2 requests each")
    args = parser.parse_args()
    clients = [1, 4] if args.quick else [1, 4, 16]
    prompts = questions(2 if args.quick else 8)
    import torch

    idle = float("inf") if args.quick else 1.5  # a smoke run measures nothing worth waiting for
    print(f"load average {load_average():.2f}", flush=True)
    wait_for_idle(threshold=idle, poll_s=30, limit_s=1800)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-serving-") as tmp:
        work = Path(tmp)
        models = build_models(work)
        rows: list[dict[str, Any]] = []
        answers: dict[str, Any] = {}
        for name, model_dir in models.items():
            model_rows, reference = bench_model(name, model_dir, work, clients, prompts, idle)
            rows += model_rows
            answers[name] = asdict(reference)
    result = {
        "benchmark": "serving",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count()},
        "settings": {
            "clients": clients,
            "requests_per_client": len(prompts),
            "repeats": REPEATS,
            "max_tokens": MAX_TOKENS,
            "tuneforge_max_batch": 8,
            "tuneforge_torch_threads": max(1, (os.cpu_count() or 2) - 1),
            "mlflow_torch_threads": torch.get_num_threads(),
            "quick": args.quick,
        },
        "notes": [
            "completion tokens: generated tokens (end of turn included) per answer, from "
            "tuneforge's usage on a reference pass; every server gave the same answers "
            "unless answers_unlike_reference says otherwise",
            "mlflow models serve has no streaming: its first-token time is the whole answer",
            "tuneforge (no stream): first-token time is the whole answer too",
            "clients run as threads in the benchmark process, on the same 2 cores",
        ],
        "reference_answers": answers,
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    if not args.quick:
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    print(table(rows))


if __name__ == "__main__":
    main()
