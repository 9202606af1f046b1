"""The OpenAI-compatible server (`tuneforge.openai_server`), a real uvicorn server over a briefly
trained tiny model, driven by the official `openai` client: its answers are the answers
`tuneforge.serving.generate` gives, streamed or not, one client or six at once, and a request
it cannot honour is a 400 in OpenAI's error shape naming the field."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import _free_port
from tuneforge.prompts import render_prompt, split_turns

pytestmark = pytest.mark.integration  # a real HTTP server: the slower tier

MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained briefly (150 steps, ~6 s): it answers something, and stops."""
    from tuneforge.config import TrainConfig
    from tuneforge.plugins.testing import sample_records, tiny_checkpoint
    from tuneforge.training.loop import train_model

    root = tmp_path_factory.mktemp("openai-server")
    base = tiny_checkpoint(root / "base")
    config = TrainConfig(steps=150, batch_size=16, max_length=64, eval_every=0, checkpoint_every=0)
    return Path(train_model(base, sample_records(400), config, root / "tuned").model_dir)


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """A second copy of the model and tokenizer, for `generate` outside the server."""
    from tuneforge.models import load_pretrained

    return load_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app on a real uvicorn server in a background thread; yields (app, base URL)."""
    import uvicorn

    from tuneforge.openai_server import create_app, load_for_serving

    model, tokenizer = load_for_serving(str(model_dir), tmp_path_factory.mktemp("scratch"))
    assert not model.training
    app = create_app(model, tokenizer, "tiny", max_new_tokens=MAX_NEW_TOKENS, max_batch=8)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{port}/v1"
    uv.should_exit = True
    thread.join(30)


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[1], api_key="unused", max_retries=0, timeout=60)


def _questions(n: int, start: int = 0) -> list[list[dict[str, str]]]:
    """Prompt turns of the bundled data's records: six task families, prompts of many lengths."""
    from tuneforge.plugins.testing import sample_records

    return [split_turns(r)[0] for r in sample_records(start + n)[start:]]


def _generate(reference, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """tuneforge's own greedy answers, one prompt at a time."""
    from tuneforge.serving import generate

    model, tokenizer = reference
    return generate(model, tokenizer, prompts, max_new_tokens, batch_size=1)


def _streamed(stream) -> tuple[str, list[str | None], object]:
    """(the text, every chunk's finish_reason, the usage) of a chat completion stream."""
    text, reasons, usage = "", [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasons.append(choice.finish_reason)
    return text, reasons, usage


def test_models_lists_the_one_model(client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "tuneforge"


def test_chat_answers_are_what_generate_answers(client, reference):
    tokenizer = reference[1]
    questions = _questions(4)
    expected = _generate(reference, [render_prompt(q, tokenizer) for q in questions])
    assert any(expected)  # a trained model answers something
    for turns, want in zip(questions, expected, strict=True):
        answer = client.chat.completions.create(model="tiny", messages=turns)
        choice = answer.choices[0]
        assert choice.message.content == want
        assert choice.message.role == "assistant"
        assert choice.finish_reason == "stop"  # it learned to end its turn
        prompt = tokenizer(render_prompt(turns, tokenizer), add_special_tokens=False).input_ids
        assert answer.usage.prompt_tokens == len(prompt)
        answer_tokens = len(tokenizer(want, add_special_tokens=False).input_ids)
        assert answer.usage.completion_tokens == answer_tokens + 1  # and the end of turn
        assert answer.usage.total_tokens == len(prompt) + answer_tokens + 1


def test_a_system_turn_and_history_go_through_the_template(client, reference):
    turns = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Say only the first letter.\n\narm"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "Convert to uppercase.\n\nwind"},
    ]
    want = _generate(reference, [render_prompt(turns, reference[1])])[0]
    answer = client.chat.completions.create(model="tiny", messages=turns)
    assert answer.choices[0].message.content == want


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client, reference):
    turns = _questions(1)[0]  # answered with 10 characters, several tokens
    want = _generate(reference, [render_prompt(turns, reference[1])], max_new_tokens=2)[0]
    for limit in ({"max_tokens": 2}, {"max_completion_tokens": 2}):
        answer = client.chat.completions.create(model="tiny", messages=turns, **limit)
        assert answer.choices[0].message.content == want
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage.completion_tokens == 2


def test_the_stream_concatenates_to_the_answer(client):
    for turns in _questions(3):
        whole = client.chat.completions.create(model="tiny", messages=turns)
        stream = client.chat.completions.create(
            model="tiny", messages=turns, stream=True, stream_options={"include_usage": True}
        )
        text, reasons, usage = _streamed(stream)
        assert text == whole.choices[0].message.content
        assert reasons[-1] == "stop" and not any(reasons[:-1])  # only the last chunk ends it
        assert usage.completion_tokens == whole.usage.completion_tokens
        assert usage.prompt_tokens == whole.usage.prompt_tokens
    stream = client.chat.completions.create(
        model="tiny", messages=_questions(1)[0], stream=True, max_tokens=2
    )
    assert _streamed(stream)[1][-1] == "length"


def test_a_stop_string_ends_the_answer_streamed_or_not(client):
    turns = _questions(1)[0]
    whole = client.chat.completions.create(model="tiny", messages=turns).choices[0]
    assert " " in whole.message.content  # "salt pearm": two words
    want = whole.message.content.split(" ")[0]
    cut = client.chat.completions.create(model="tiny", messages=turns, stop=" ")
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (want, "stop")
    assert (
        cut.usage.completion_tokens
        < client.chat.completions.create(model="tiny", messages=turns).usage.completion_tokens
    )
    stream = client.chat.completions.create(
        model="tiny", messages=turns, stop=["zz", " "], stream=True
    )
    text, reasons, _ = _streamed(stream)
    assert (text, reasons[-1]) == (want, "stop")


def test_completions_take_the_prompt_as_is_one_choice_each(client, reference):
    tokenizer = reference[1]
    prompts = [render_prompt(q, tokenizer) for q in _questions(3)] + ["### Instruction:\n"]
    expected = _generate(reference, prompts)
    answer = client.completions.create(model="tiny", prompt=prompts)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert [c.text for c in answer.choices] == expected
    assert answer.usage.prompt_tokens == sum(
        len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts
    )
    one = client.completions.create(model="tiny", prompt=prompts[0])
    assert [c.text for c in one.choices] == expected[:1]

    texts, reasons = ["", ""], [None, None]
    for chunk in client.completions.create(model="tiny", prompt=prompts[:2], stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert texts == expected[:2]
    assert reasons == [c.finish_reason for c in answer.choices[:2]]


def test_six_clients_at_once_are_all_answered_as_one_at_a_time(server, reference):
    app, url = server
    tokenizer = reference[1]
    questions = _questions(6)  # prompts of different lengths: batches are padded
    # Budgets differ within a batch too: two answers are cut short, the rest end their turn.
    budgets = [2, MAX_NEW_TOKENS, MAX_NEW_TOKENS, MAX_NEW_TOKENS, 3, MAX_NEW_TOKENS]
    expected = [
        _generate(reference, [render_prompt(q, tokenizer)], budget)[0]
        for q, budget in zip(questions, budgets, strict=True)
    ]
    answers: dict[int, str] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(len(questions))
    sizes_before = app.state.service.worker.batch_sizes.copy()

    def ask(i: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        try:
            barrier.wait()
            if i % 3 == 2:  # two of the six stream
                stream = client.chat.completions.create(
                    model="tiny", messages=questions[i], max_tokens=budgets[i], stream=True
                )
                answers[i] = _streamed(stream)[0]
            else:
                answer = client.chat.completions.create(
                    model="tiny", messages=questions[i], max_tokens=budgets[i]
                )
                answers[i] = answer.choices[0].message.content
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    assert [answers.get(i) for i in range(len(questions))] == expected
    sizes = app.state.service.worker.batch_sizes - sizes_before
    assert sum(size * n for size, n in sizes.items()) == len(questions)  # each generated once
    assert max(sizes) > 1  # the waiting non-streaming requests shared a batch


def test_a_waiting_request_whose_client_left_is_not_generated(server, monkeypatch):
    app, url = server
    worker = app.state.service.worker
    generate, busy = worker._generate, threading.Event()

    def slow_first(jobs):  # the request ahead takes 2 s: the second waits behind it
        busy.set()
        time.sleep(2.0)
        generate(jobs)

    monkeypatch.setattr(worker, "_generate", slow_first)
    sizes_before = worker.batch_sizes.copy()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ahead = threading.Thread(
        target=httpx.post, args=(f"{url}/chat/completions",), kwargs={"json": body, "timeout": 60}
    )
    ahead.start()
    assert busy.wait(30)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while its request waits
        httpx.post(f"{url}/chat/completions", json=body, timeout=0.5)
    ahead.join(60)
    time.sleep(0.5)  # the worker has taken the queue by now
    monkeypatch.undo()
    sizes = worker.batch_sizes - sizes_before
    assert sum(size * n for size, n in sizes.items()) == 1  # the first alone was generated
    answer = httpx.post(f"{url}/chat/completions", json=body, timeout=60)  # still serving
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "word " * 300}]}, "messages"),
        ({"temperature": 0.7}, "temperature"),
        ({"n": 2}, "n"),
        ({"max_tokens": MAX_NEW_TOKENS + 1}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
def test_a_bad_chat_request_is_a_400_naming_the_field(client, request_body, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **request_body}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**body)
    error = refused.value.body
    assert refused.value.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(param.split("[")[0]) and "\n" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_an_unknown_model_is_a_404_model_not_found_as_openai_answers(client):
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert refused.value.body["code"] == "model_not_found"
    assert refused.value.body["param"] == "model"
    assert "'tiny'" in refused.value.body["message"]  # names the model it does serve
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.models.retrieve("tiny").id == "tiny"


def test_other_bad_requests_get_the_openai_error_shape(client, server):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny", prompt="")
    assert refused.value.body["param"] == "prompt[0]"
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, echo=True)
    assert refused.value.body["param"] == "echo"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=None)  # type: ignore[arg-type]
    assert refused.value.body["message"].startswith("messages:")
    url = server[1]
    bad_json = httpx.post(
        f"{url}/chat/completions", content=b"{", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["message"].startswith("the body is not valid JSON")
    missing = httpx.post(f"{url}/embeddings", json={"model": "tiny", "input": "x"})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/embeddings)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_streamed_text_holds_back_half_a_character(reference):
    from tuneforge.openai_server import _Detokenizer

    tokenizer = reference[1]
    tokens = tokenizer("é ü x", add_special_tokens=False).input_ids
    assert len(tokens) > 3  # byte-level BPE: é and ü are two byte tokens each here
    detok = _Detokenizer(tokenizer, set(), [], budget=len(tokens))
    pieces = [detok.add(t) for t in tokens]
    assert "".join(pieces) == "é ü x"
    assert not any("\ufffd" in p for p in pieces)
    assert detok.finish_reason == "length"


def test_load_for_serving_a_registered_version(model_dir, reference, tmp_path):
    from mlflow.tracking import MlflowClient

    from tuneforge.openai_server import load_for_serving, model_id_for
    from tuneforge.packaging import ModelPackage, save_package

    client = MlflowClient()  # the tests' own sqlite store (MLFLOW_TRACKING_URI, conftest.py)
    name = f"openai-server-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name, artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    package = ModelPackage(None, "float32", MAX_NEW_TOKENS, False)
    save_package(model_dir, package, tmp_path / "model", tmp_path / "package")
    client.log_artifacts(run_id, str(tmp_path / "model"), "model")
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run_id}/model", run_id)

    uri = f"models:/{name}/1"
    model, tokenizer = load_for_serving(uri, tmp_path / "scratch")
    assert not model.training and model_id_for(uri) == f"{name}/1"
    prompts = [render_prompt(q, tokenizer) for q in _questions(2)]
    from tuneforge.serving import generate

    assert generate(model, tokenizer, prompts, MAX_NEW_TOKENS, 1) == _generate(reference, prompts)

    from tuneforge.serving import ModelLoadError

    with pytest.raises(ModelLoadError, match="no such checkpoint directory"):
        load_for_serving(str(tmp_path / "nowhere"), tmp_path / "scratch2")
    with pytest.raises(ModelLoadError, match="models:/nowhere/1"):
        load_for_serving("models:/nowhere/1", tmp_path / "scratch3")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_for_serving(str(tmp_path), tmp_path / "scratch4")
