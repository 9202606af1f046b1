"""Exports of registered versions (Prefect test server, MLflow server over HTTP), read back by
code that is not tuneforge's: a full version with `registry.export: [merged, gguf]` logged by
its retrain, and a QLoRA adapter version on it, exported by `tuneforge export`.

- merged: plain transformers, in a fresh process that never imports tuneforge, gives the
  registered version's greedy answers; `--check` finds it identical;
- gguf (f16): transformers' GGUF reader gives the same greedy answers;
- adapter: the QLoRA version's PEFT directory passes the vLLM check and, on its base, answers as
  the version does;
- `tuneforge serve` on the QLoRA version (its base fetched from the registry, the adapter
  merged), in a process of its own, answers the `openai` client as the version does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, NO_GATE, PRESET, _free_port

pytestmark = pytest.mark.integration

MODEL = "it-exports"


def _config(tracking_uri: str, out: Path, *overrides: str):
    from tuneforge.config import load_config

    return load_config(
        PRESET,
        [
            *NO_GATE,
            f"data.path={BUNDLED_DATA}",
            f"output_dir={out}",
            f"tracking.tracking_uri={tracking_uri}",
            "tracking.experiment=exports",
            "evaluation.max_examples=32",
            "train.eval_every=0",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def versions(prefect_harness, mlflow_server, tmp_path_factory):
    from tuneforge.flows.retrain import retrain

    out = tmp_path_factory.mktemp("exports")
    full = retrain(
        _config(
            mlflow_server,
            out,
            f"registry.model_name={MODEL}",
            "train.steps=400",
            "registry.export=[merged, gguf]",
        )
    )
    qlora = retrain(
        _config(
            mlflow_server,
            out,
            f"registry.model_name={MODEL}-lora",
            f"model.source=models:/{MODEL}/{full.registration.version}",
            "train.strategy=lora",
            "train.settings.quantize_4bit=true",
            "train.steps=20",
        )
    )
    return full, qlora


def _cli(mlflow_server: str, *args: str) -> dict:
    from typer.testing import CliRunner

    from tuneforge.cli import app

    done = CliRunner().invoke(app, [*args, "--tracking-uri", mlflow_server, "--json"])
    assert done.exit_code == 0, done.output[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export_checked(mlflow_server: str, uri: str, fmt: str, out: Path, rows: int) -> dict:
    """`tuneforge export URI --format FMT --check` on `rows` prompts of the bundled data."""
    args = ["--format", fmt, "--out", str(out), "--check", "--data", str(BUNDLED_DATA)]
    return _cli(mlflow_server, "export", uri, *args, "--rows", str(rows))


def _prompts() -> list[str]:
    from tuneforge.plugins.testing import sample_records
    from tuneforge.prompts import split_turns

    # The plain template tuneforge renders for the tiny model (it has no chat template).
    return [
        f"### Instruction:\n{split_turns(r)[0][-1]['content']}\n\n### Response:\n"
        for r in sample_records(12)
    ]


def _registered_answers(
    mlflow_server: str, uri: str, prompts: list[str], scratch: Path
) -> list[str]:
    """The registered version's own greedy answers, as its pyfunc model gives them."""
    import mlflow

    from tuneforge.serving import download, generate, load_registered

    mlflow.set_tracking_uri(mlflow_server)
    root = download(uri, scratch / "version")
    model, tokenizer = load_registered(root, scratch / "base")
    return generate(model.eval(), tokenizer, prompts, 12, 1)  # one at a time, as compared


def test_the_retrain_logs_its_exports_with_their_sizes(versions, mlflow_server):
    from mlflow.tracking import MlflowClient

    full, _ = versions
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL, full.registration.version)
    exported = json.loads(version.tags["tuneforge.exports"])
    assert set(exported) == {"merged", "gguf"}
    listed = {a.path: a.file_size for a in client.list_artifacts(full.run_id, "exports/gguf")}
    assert listed == {exported["gguf"]["artifact"]: exported["gguf"]["bytes"]}
    merged = client.list_artifacts(full.run_id, "exports/merged")
    assert sum(a.file_size for a in merged) == exported["merged"]["bytes"]
    assert {"exports/merged/config.json", "exports/merged/model.safetensors"} <= {
        a.path for a in merged
    }


def test_a_merged_export_answers_in_plain_transformers_like_the_version(
    versions, mlflow_server, tmp_path
):
    full, _ = versions
    uri = f"models:/{MODEL}/{full.registration.version}"
    result = _export_checked(mlflow_server, uri, "merged", tmp_path / "m", 8)
    assert result["check"]["identical"] and result["check"]["prompts"] == 8
    prompts = _prompts()
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(tmp_path / 'm')!r})\n"
        "out = []\n"
        "for p in json.loads(sys.stdin.read()):\n"
        "    ids = t(p, return_tensors='pt', add_special_tokens=False).input_ids\n"
        "    g = m.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=t.eos_token_id,"
        " pad_token_id=t.pad_token_id)\n"
        "    out.append(t.decode(g[0, ids.shape[1]:], skip_special_tokens=True))\n"
        "assert not any(name.startswith('tuneforge') for name in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(prompts),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain == _registered_answers(mlflow_server, uri, prompts, tmp_path)
    assert any(a.strip() for a in plain)


def test_a_gguf_export_reads_back_in_transformers_with_the_same_answers(
    versions, mlflow_server, tmp_path
):
    full, _ = versions
    uri = f"models:/{MODEL}/{full.registration.version}"
    result = _export_checked(mlflow_server, uri, "gguf", tmp_path / "g", 8)
    assert result["path"].endswith("-f16.gguf") and result["bytes"] > 0
    check = result["check"]
    assert check["same_answers"] == check["prompts"] == 8, check["differing"]
    assert 0.0 < check["max_logit_difference"] < 0.1  # f16 rounding, no more


def test_a_qlora_adapter_exports_for_vllm_and_answers_on_its_base(
    versions, mlflow_server, tmp_path
):
    full, qlora = versions
    uri = f"models:/{MODEL}-lora/{qlora.registration.version}"
    result = _export_checked(mlflow_server, uri, "adapter", tmp_path / "a", 6)
    assert result["check"]["identical"]
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 8 and not config.get("modules_to_save")
    note = json.loads((tmp_path / "a" / "tuneforge_export.json").read_text())
    assert note["base"] == f"models:/{MODEL}/{full.registration.version}"
    merged = _export_checked(mlflow_server, uri, "merged", tmp_path / "qm", 6)
    assert merged["check"]["identical"]  # base unquantised, adapter merged in


def test_a_full_version_is_not_an_adapter_and_says_so_in_one_line(
    versions, mlflow_server, tmp_path
):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    full, _ = versions
    uri = f"models:/{MODEL}/{full.registration.version}"
    done = CliRunner().invoke(
        app,
        [
            "export",
            uri,
            "--format",
            "adapter",
            "--out",
            str(tmp_path / "x"),
            "--tracking-uri",
            mlflow_server,
        ],
    )
    assert done.exit_code == 2
    (line,) = done.stderr.strip().splitlines()
    assert "a full checkpoint, not an adapter" in line and "export it as merged or gguf" in line


def test_tuneforge_serve_answers_the_openai_client_as_the_version_does(
    versions, mlflow_server, tmp_path
):
    import httpx
    import openai

    from tuneforge.plugins.testing import sample_records
    from tuneforge.prompts import split_turns

    _, qlora = versions
    uri = f"models:/{MODEL}-lora/{qlora.registration.version}"
    port = _free_port()
    command = [str(Path(sys.executable).parent / "tuneforge"), "serve", uri, "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*command, "--tracking-uri", mlflow_server], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "tuneforge serve did not come up"
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert [m["id"] for m in listed["data"]] == [uri.removeprefix("models:/")]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        answers = [
            client.chat.completions.create(
                model=listed["data"][0]["id"],
                messages=[{"role": "user", "content": split_turns(r)[0][-1]["content"]}],
                max_tokens=12,
            )
            .choices[0]
            .message.content
            for r in sample_records(4)
        ]
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert answers == _registered_answers(mlflow_server, uri, _prompts()[:4], tmp_path)
