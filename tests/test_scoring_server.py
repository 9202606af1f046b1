"""A registered version behind MLflow's own scoring server (`mlflow models serve`, a real
process over HTTP): every request form gives the answer `predict` gives in process, and an
input it cannot answer is HTTP 400 with tuneforge's one-line reason as the message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port

pytestmark = pytest.mark.integration

ALPACA = {"instruction": "Write the word in capital letters.", "input": "salt"}
PROMPT = {"prompt": "Give the first letter of the word.\n\nowl"}
CHAT = {"messages": [{"role": "user", "content": "Give the opposite of the word.\n\nhot"}]}
PLAIN = "Convert to uppercase.\n\nlamp"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A briefly trained tiny model saved as a tuneforge pyfunc model, loaded in process and
    served by `mlflow models serve`; yields (in-process model, server URL)."""
    import mlflow.pyfunc

    from tuneforge.config import TrainConfig
    from tuneforge.packaging import ModelPackage, save_package
    from tuneforge.plugins.testing import sample_records, tiny_checkpoint
    from tuneforge.training.loop import train_model

    root = tmp_path_factory.mktemp("scoring")
    base = tiny_checkpoint(root / "base")
    config = TrainConfig(steps=150, batch_size=16, max_length=64, eval_every=0)
    trained = train_model(base, sample_records(400), config, root / "tuned")
    save_package(
        Path(trained.model_dir),
        ModelPackage(None, "float32", 8, False),
        root / "model",
        root / "tmp",
    )
    in_process = mlflow.pyfunc.load_model(str(root / "model"))
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with (root / "server.log").open("w") as log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "models", "serve"),
                *("-m", str(root / "model"), "--env-manager", "local"),
                *("-p", str(port), "--host", "127.0.0.1", "--workers", "1"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((root / "server.log").read_text()[-3000:]) from None
                time.sleep(1)
        yield in_process, url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("body", "inputs"),
    [
        ({"inputs": [PLAIN, ALPACA, PROMPT, CHAT]}, [PLAIN, ALPACA, PROMPT, CHAT]),
        ({"inputs": [ALPACA]}, [ALPACA]),  # the form that answered `sh` for `SALT`
        ({"inputs": ALPACA}, [ALPACA]),  # one record, not a list
        ({"inputs": [PLAIN, PLAIN]}, [PLAIN, PLAIN]),
        (
            {"dataframe_records": [ALPACA, {"instruction": "Shout this word."}]},
            [ALPACA, {"instruction": "Shout this word."}],
        ),
        ({"dataframe_records": [PROMPT]}, [PROMPT]),
        ({"dataframe_records": [CHAT]}, [CHAT]),
        (
            {
                "dataframe_split": {
                    "columns": ["instruction", "input"],
                    "data": [[ALPACA["instruction"], ALPACA["input"]]],
                }
            },
            [ALPACA],
        ),
        ({"inputs": [ALPACA, CHAT], "params": {"max_new_tokens": 2}}, [ALPACA, CHAT]),
    ],
    ids=[
        "inputs-mixed",
        "inputs-alpaca",
        "inputs-one",
        "inputs-strings",
        "records-alpaca",
        "records-prompt",
        "records-chat",
        "split",
        "with-params",
    ],
)
def test_every_request_form_answers_as_predict_does_in_process(served, body, inputs):
    in_process, url = served
    status, answer = _post(url, body)
    assert status == 200, answer
    expected = in_process.predict(inputs, params=body.get("params"))
    assert answer["predictions"] == expected
    assert any(expected)  # a trained model answers something


def test_the_uppercase_record_answers_the_same_whichever_way_it_is_sent(served):
    _, url = served
    answers = {
        form: _post(url, body)[1]["predictions"][0]
        for form, body in {
            "inputs": {"inputs": [ALPACA]},
            "records": {"dataframe_records": [ALPACA]},
            "split": {
                "dataframe_split": {"columns": list(ALPACA), "data": [list(ALPACA.values())]}
            },
            "plain": {"inputs": [f"{ALPACA['instruction']}\n\n{ALPACA['input']}"]},
        }.items()
    }
    assert len(set(answers.values())) == 1, answers


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"inputs": [{"question": "x"}]},
            "input 0: a dict needs 'instruction' (and optionally 'input'), 'prompt' or 'messages'; "
            "got keys ['question']",
        ),
        (
            {"inputs": [CHAT, {"messages": [{"role": "assistant", "content": "x"}]}]},
            "input 1: the last message must be the user's (the question)",
        ),
        (
            {"dataframe_records": [{"instruction": "x", "output": "y"}]},
            "input 0: a dict needs 'instruction' (and optionally 'input'), 'prompt' or 'messages'; "
            "got keys ['instruction', 'output']",
        ),
    ],
)
def test_an_input_it_cannot_answer_is_a_400_with_the_reason_as_its_message(served, body, message):
    _, url = served
    status, answer = _post(url, body)
    assert status == 400
    assert answer["message"] == message
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
