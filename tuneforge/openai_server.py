"""An OpenAI-compatible HTTP server over one tuneforge model (`tuneforge serve`).

Run it on a registered version or a local checkpoint directory:

    tuneforge serve models:/tuneforge-demo@champion             # http://127.0.0.1:8000/v1
    python -c "from tuneforge.openai_server import serve; serve('runs/x/model', port=8001)"

then point any OpenAI client at it:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="tuneforge-demo@champion",
                                   messages=[{"role": "user", "content": "Hi"}])

The model id is the URI without `models:/` (`tuneforge-demo@champion`, `tuneforge-demo/3`), or
a checkpoint directory's name; `GET /v1/models` lists it. A registered version is fetched
through the registry `MLFLOW_TRACKING_URI` names; an adapter version comes merged onto its base.

What it does:
- `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`, with the OpenAI
  request and response shapes, streaming as server-sent events (`stream: true`, and
  `stream_options.include_usage`), `stop` strings, `usage` and `finish_reason`.
- Chat messages are rendered exactly as training rendered them (`tuneforge.prompts`): the
  tokenizer's chat template, or tuneforge's plain template when it has none. A completion's
  prompt goes to the model as is.
- Answers are the answers `tuneforge.serving.generate` gives (what evaluation scored and what
  the registered MLflow model returns): greedy, left-padded batches, stopping at the end of turn.
  `usage.completion_tokens` counts the tokens generated, the end-of-turn token included.
- `max_tokens` (or `max_completion_tokens`) defaults to the server's `max_new_tokens` (for
  completions too, where OpenAI's default is 16) and may not exceed it; a prompt that leaves
  no room in the model's context, or less than `max_tokens`, is a 400 (`context_length_exceeded`).
- One worker thread owns the model and runs one generation at a time: on a CPU two generations
  at once would only fight over the cores. Waiting non-streaming requests are answered together,
  up to `max_batch` in one batch, each as soon as its own row ends; streaming requests are
  served one at a time, in order. `serve` has torch compute on all cores but one, which it
  leaves to the HTTP side (`num_threads` to change it).

What it does not do:
- Sampling. Decoding is greedy: `temperature` must be 0 or absent (absent means greedy here, not
  OpenAI's 1), `n` and `best_of` 1, penalties 0; anything else is refused with a 400 naming the
  field, as is any other option that would change the answer (tools, logprobs, response_format).
  Options that cannot change a greedy answer (`seed`, `top_p`, `user`) are accepted and ignored.
- Text content only (no content parts, images or tools), one model, no embeddings.
- Authentication: none. It binds 127.0.0.1 unless told otherwise; to share it, put it behind a
  proxy that authenticates.
- Batching across streams: with several streaming clients each waits for the ones before it.
- Bit-for-bit batch independence: a padded batch adds up in another order than one prompt
  alone, so a near-tie between two tokens could in principle answer differently (as in any
  batched server; not seen in the tests). Streamed text relies on the tokenizer decoding a
  prefix of the tokens to a prefix of the text (true of byte-level BPE and SentencePiece).
- A non-streaming answer with `stop` strings is generated to its end and then cut (a stream
  stops at the stop string); `usage` counts the tokens up to the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.models import ModelSourceError, load_pretrained, pick_device
from tuneforge.prompts import render_prompt, stop_token_ids
from tuneforge.serving import (
    ModelLoadError,
    download,
    load_registered,
    materialize,
    read_manifest,
)

log = logging.getLogger(__name__)

REGISTRY_PREFIX = "models:/"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_MAX_STOPS = 4  # OpenAI's limit on `stop` strings
# How often a waiting non-streamed request checks that its client is still there: a client
# that gave up (a timeout, a retry) is not worth generating for.
_DISCONNECT_POLL_S = 0.25


# --- requests -----------------------------------------------------------------------------------


def _as_list(value: Any) -> Any:
    """`stop` and `prompt` take a string or a list of strings: one string becomes a list, so a
    bad value gets one error naming the field rather than one per member of a union."""
    return [value] if isinstance(value, str) else value


StringList = Annotated[list[str], BeforeValidator(_as_list)]


class ChatMessage(BaseModel):
    """One chat turn; `developer` is OpenAI's newer name for `system`."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """What chat and text completions share. Fields not declared here are accepted only with a
    value that changes nothing (null, false, empty): clients send some of them by default."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)  # no effect on a greedy answer
    n: int | None = Field(None, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: StringList | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None  # greedy answers are deterministic anyway
    user: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_GenerationRequest):
    prompt: StringList
    best_of: int | None = Field(None, ge=1)


class RequestError(Exception):
    """A request the server refuses: answered with OpenAI's error shape, `message` one line."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def _error_body(message: str, param: str | None, code: str | None, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _field_path(loc: Iterable[Any]) -> str | None:
    """`("body", "messages", 0, "role")` -> `messages[0].role`, the way OpenAI names params."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def _check_request(req: _GenerationRequest) -> None:
    """Refuses what greedy decoding of one answer cannot honour, naming the field."""
    if req.temperature:
        raise RequestError(
            "temperature: only 0 is supported (this server decodes greedily)", "temperature"
        )
    if req.n not in (None, 1):
        raise RequestError("n: only 1 is supported (one greedy answer per prompt)", "n")
    if isinstance(req, CompletionRequest) and req.best_of not in (None, 1):
        raise RequestError("best_of: only 1 is supported (greedy decoding)", "best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise RequestError(f"{name}: only 0 is supported (greedy decoding)", name)
    for name, value in (req.model_extra or {}).items():
        if value not in (None, False, [], {}, ""):
            raise RequestError(f"{name}: not supported by this server (greedy, text only)", name)
    if req.stop is not None:
        if len(req.stop) > _MAX_STOPS:
            raise RequestError(f"stop: at most {_MAX_STOPS} strings", "stop")
        if not all(req.stop):
            raise RequestError("stop: empty string", "stop")


def _chat_turns(messages: list[ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise RequestError("messages: must not be empty", "messages")
    if messages[-1].role != "user":
        raise RequestError(
            f"messages[{len(messages) - 1}].role: the last message must be the user's "
            f"(got {messages[-1].role!r})",
            "messages",
        )
    roles = {"developer": "system"}
    return [{"role": roles.get(m.role, m.role), "content": m.content} for m in messages]


# --- generation ---------------------------------------------------------------------------------


@dataclass
class Answer:
    """One finished answer: its text, why it ended ("stop" or "length"), and how many tokens
    were generated for it (the end-of-turn token included)."""

    text: str
    finish_reason: str
    completion_tokens: int


class _Detokenizer:
    """Turns generated token ids into text as they arrive, and decides where the answer ends:
    at a stop token, at the first `stop` string, or at the token budget.

    Text is held back while it may still change: an incomplete UTF-8 character (decoded as
    U+FFFD until its last byte arrives) and a tail that could be the start of a stop string.
    The pieces `add` returns concatenate to `tokenizer.decode(tokens, skip_special_tokens=True)`
    cut at the stop string, the same text the non-streaming path returns.
    """

    def __init__(self, tokenizer: Any, stop_ids: set[int], stops: list[str], budget: int) -> None:
        self.tokenizer, self.stop_ids, self.stops, self.budget = tokenizer, stop_ids, stops, budget
        self.tokens: list[int] = []
        self.text = ""  # what has been released
        self.finish_reason: str | None = None

    def add(self, token: int) -> str:
        """Takes the next token; returns the text it releases ("" while held back)."""
        if self.finish_reason is not None:
            return ""
        self.tokens.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return self._release(self._decode())
        text = self._decode()
        cut = min((i for s in self.stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return self._release(text[:cut])
        if len(self.tokens) >= self.budget:
            self.finish_reason = "length"
            return self._release(text)
        stable = len(text.rstrip("\ufffd"))
        held = max((_overlap(text[:stable], stop) for stop in self.stops), default=0)
        stable -= held  # a tail that may yet become a stop string
        return self._release(text[:stable]) if stable > len(self.text) else ""

    def close(self) -> str:
        """Generation ended without a reason of ours (it should not): release the rest."""
        if self.finish_reason is None:
            self.finish_reason = "length"
            return self._release(self._decode())
        return ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _release(self, text: str) -> str:
        new, self.text = text[len(self.text) :], text
        return new


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a proper start of `stop`."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


def finish_answer(
    tokenizer: Any, tokens: list[int], stop_ids: set[int], stops: list[str]
) -> Answer:
    """The answer in a row of generated tokens already cut at its budget and first stop token."""
    if not stops:  # the common case, decoded exactly as `tuneforge.serving.generate` decodes
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        reason = "stop" if tokens and tokens[-1] in stop_ids else "length"
        return Answer(text, reason, len(tokens))
    detok = _Detokenizer(tokenizer, stop_ids, stops, len(tokens))
    for token in tokens:
        detok.add(token)
        if detok.finish_reason is not None:
            break
    detok.close()
    return Answer(detok.text, detok.finish_reason or "length", len(detok.tokens))


@dataclass
class _Job:
    """One prompt to answer. A streaming job hands over each token as it comes, then None; a
    non-streaming one hands over its tokens once, when its row is done; a failure is handed
    over as the exception. `deliver` is called from the worker thread."""

    prompt: list[int]
    budget: int
    stream: bool
    deliver: Callable[[Any], None]
    # Set by the request side: the client left, or a stop string ended the answer.
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    finished: bool = False

    def take(self, token: int, stop_ids: set[int]) -> None:
        self.tokens.append(token)
        if self.stream:
            self.deliver(token)
        if token in stop_ids or len(self.tokens) >= self.budget:
            self.finish()

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.deliver(None if self.stream else self.tokens)

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.deliver(exc)


class _Rows:
    """The jobs of one `generate` call, one row each. As its streamer it hands every step's
    tokens to the rows' jobs, so a row's answer goes out as soon as that row is done, not
    when the batch is; as a stopping criterion it tells `generate` which rows are done (at
    their own budget, or cancelled), so the batch ends when its last row does."""

    def __init__(self, jobs: list[_Job], stop_ids: set[int]) -> None:
        self.jobs, self.stop_ids = jobs, stop_ids
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate hands its streamer the prompts first
            self.prompt_seen = True
            return
        for job, token in zip(self.jobs, value.reshape(-1).tolist(), strict=True):
            if not job.finished:
                job.take(int(token), self.stop_ids)

    def end(self) -> None:
        for job in self.jobs:  # rows cancelled midway
            job.finish()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [job.finished or job.cancelled.is_set() for job in self.jobs]
        return torch.tensor(done, device=input_ids.device)


class ModelWorker:
    """The one thread that owns the model. Requests queue here; the thread takes the oldest,
    and with a non-streaming one every other waiting non-streaming request (up to `max_batch`),
    generating them as one left-padded greedy batch. Streams keep their order and run alone."""

    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], max_batch: int) -> None:
        self.model, self.stop_ids, self.max_batch = model, stop_ids, max_batch
        self.pad_id = tokenizer.pad_token_id
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # How many generations ran at each batch size (counted as they start): how well requests
        # batch, in a histogram that stays small however long the server runs.
        self.batch_sizes: Counter[int] = Counter()

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tuneforge-model", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30) -> None:
        """Stops after the generation in progress; every request still waiting is failed."""
        with self._wake:
            self._stopping = True
            waiting, self._jobs = list(self._jobs), deque()
            self._wake.notify()
        for job in waiting:
            job.fail(RequestError("the server is shutting down", status=503))
        if self._thread is not None:
            self._thread.join(timeout_s)

    def submit(self, job: _Job) -> None:
        with self._wake:
            if self._stopping or self._thread is None:
                raise RequestError("the server is not running", status=503)
            self._jobs.append(job)
            self._wake.notify()

    def _next(self) -> list[_Job] | None:
        """The next jobs to generate together: the oldest, and with a non-streaming one the
        non-streaming jobs waiting behind it (the streams among them keep their places)."""
        with self._wake:
            while not self._jobs and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            batch = [self._jobs.popleft()]
            if batch[0].stream:
                return batch
            rest: deque[_Job] = deque()
            while self._jobs:
                job = self._jobs.popleft()
                full = len(batch) >= self.max_batch
                (rest if job.stream or full else batch).append(job)
            self._jobs = rest
            return batch

    def _run(self) -> None:
        import torch

        while (jobs := self._next()) is not None:
            jobs = [job for job in jobs if not job.cancelled.is_set()]  # their clients left
            if not jobs:
                continue
            self.batch_sizes[len(jobs)] += 1
            try:
                with torch.inference_mode():
                    self._generate(jobs)
            except Exception as exc:  # a failed generation fails its requests, not the server
                log.exception("generation failed")
                for job in jobs:
                    job.fail(exc)

    def _generate(self, jobs: list[_Job]) -> None:
        """`model.generate` as `tuneforge.serving.generate` calls it, so the answers are the
        same. The prompts are padded here, on the left, as its tokenizer call pads them: the
        tokenizer is never asked to pad, so request handlers may encode with it meanwhile."""
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(job.prompt) for job in jobs)
        ids = [[self.pad_id] * (width - len(job.prompt)) + job.prompt for job in jobs]
        mask = [[0] * (width - len(job.prompt)) + [1] * len(job.prompt) for job in jobs]
        rows = _Rows(jobs, set(self.stop_ids))
        # One budget for the batch, the largest: a greedy row's first k tokens do not depend on
        # how many come after them, and `rows` ends each row at its own budget.
        self.model.generate(
            input_ids=torch.tensor(ids, device=self.model.device),
            attention_mask=torch.tensor(mask, device=self.model.device),
            max_new_tokens=max(job.budget for job in jobs),
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.stop_ids,
            streamer=rows,
            stopping_criteria=StoppingCriteriaList([rows]),
        )


def _threadsafe(loop: asyncio.AbstractEventLoop, call: Callable[[Any], None]) -> Callable:
    """`call` run on the request's event loop from the worker thread (dropped if it closed)."""

    def deliver(value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(call, value)

    return deliver


# --- the app ------------------------------------------------------------------------------------


class _Service:
    """The request side: validates and encodes a request, hands it to the worker, and shapes
    what comes back."""

    def __init__(
        self, model: Any, tokenizer: Any, model_id: str, max_new_tokens: int, max_batch: int
    ) -> None:
        self.tokenizer, self.model_id, self.max_new_tokens = tokenizer, model_id, max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer)
        self.worker = ModelWorker(model, tokenizer, self.stop_ids, max_batch)
        config = getattr(model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        self.created = int(time.time())

    def check_model(self, model: str) -> None:
        if model != self.model_id:
            raise RequestError(
                f"model: unknown model {model!r}; this server serves {self.model_id!r}",
                "model",
                "model_not_found",
                status=404,  # as OpenAI answers it
            )

    def encode(self, text: str, param: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise RequestError(f"{param}: empty prompt", param)
        return ids

    def budget(self, prompt_tokens: int, requested: int | None, param: str, prompt: str) -> int:
        """The answer's token budget: the request's, else the server's default, within the
        server's limit and the model's context."""
        if requested is not None and requested > self.max_new_tokens:
            raise RequestError(
                f"{param}: {requested} is over this server's limit of {self.max_new_tokens} "
                "(tuneforge serve --max-new-tokens)",
                param,
            )
        budget = requested or self.max_new_tokens
        if self.context is None:
            return budget
        room = self.context - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            asked = f" + {requested} to generate" if requested is not None else ""
            raise RequestError(
                f"{prompt}: the prompt is {prompt_tokens} tokens{asked}; the model's context "
                f"is {self.context} tokens",
                prompt,
                "context_length_exceeded",
            )
        return min(budget, room)

    async def complete(self, prompt: list[int], budget: int, stops: list[str]) -> Answer:
        """One non-streaming answer, generated in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()

        def settle(result: list[int] | BaseException) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        job = _Job(prompt, budget, stream=False, deliver=_threadsafe(loop, settle))
        self.worker.submit(job)
        try:
            tokens = await future
        except asyncio.CancelledError:
            job.cancelled.set()  # the client left before its turn: not worth generating
            raise
        return finish_answer(self.tokenizer, tokens, set(self.stop_ids), stops)

    async def stream(
        self, prompt: list[int], budget: int, stops: list[str]
    ) -> AsyncIterator[tuple[str, _Detokenizer]]:
        """The answer's text piece by piece, with the detokenizer that tells when it ended."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int | BaseException | None] = asyncio.Queue()
        job = _Job(prompt, budget, stream=True, deliver=_threadsafe(loop, tokens.put_nowait))
        detok = _Detokenizer(self.tokenizer, set(self.stop_ids), stops, budget)
        self.worker.submit(job)
        try:
            while detok.finish_reason is None:
                item = await tokens.get()
                if isinstance(item, BaseException):
                    raise item
                piece = detok.close() if item is None else detok.add(item)
                if piece or detok.finish_reason is not None:
                    yield piece, detok
        finally:
            # Ended by a stop string, or the client left: either way the worker can stop.
            job.cancelled.set()


_T = TypeVar("_T")


async def _unless_client_left(request: fastapi.Request, work: Awaitable[_T]) -> _T:
    """`work`'s result. If the client disconnects first, `work` is cancelled (its requests
    marked, so the worker skips them or stops generating them) and the answer, to nobody, is
    499 (nginx's "client closed request"). Starlette cancels a stream's generator itself when
    its client leaves, but not a plain handler: hence this watch."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise RequestError("the client closed the connection", status=499)
    finally:
        task.cancel()  # a no-op once it is done


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _errors_as_events(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """A failure after the stream has begun (status 200 already sent) becomes an error event,
    which the OpenAI client raises as an `APIError`."""
    try:
        async for event in events:
            yield event
    except RequestError as exc:
        yield _sse(_error_body(exc.message, exc.param, exc.code, "invalid_request_error"))
    except Exception:
        # The details (paths, internals) go to the server's log, not to any client.
        log.exception("streaming failed")
        yield _sse(
            _error_body("generation failed; see the server's log", None, None, "server_error")
        )


def create_app(
    model: Any,
    tokenizer: Any,
    model_id: str,
    *,
    max_new_tokens: int = 256,
    max_batch: int = 8,
) -> fastapi.FastAPI:
    """The OpenAI-compatible app over a loaded model (see the module docstring).

    Args:
        model: A causal LM in eval mode, on the device it generates on.
        tokenizer: Its tokenizer (a pad token set, as `tuneforge.models.load_pretrained` sets).
        model_id: The id clients name in `model`, and `GET /v1/models` lists.
        max_new_tokens: A request's answer length when it names none, and the most it may ask.
        max_batch: The most non-streaming requests generated together in one batch.

    Returns:
        The FastAPI app. Its worker thread starts and stops with the app's lifespan (uvicorn, or
        `TestClient` used as a context manager).
    """
    if max_new_tokens < 1 or max_batch < 1:
        raise ValueError("max_new_tokens and max_batch must be at least 1")
    service = _Service(model, tokenizer, model_id, max_new_tokens, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: fastapi.FastAPI) -> AsyncIterator[None]:
        service.worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.worker.stop)

    app = fastapi.FastAPI(title="tuneforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(RequestError)
    async def refused(request: fastapi.Request, exc: RequestError) -> JSONResponse:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        body = _error_body(exc.message, exc.param, exc.code, kind)
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: fastapi.Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers a malformed body with 400, not FastAPI's 422; the first error, one line.
        error = exc.errors()[0]
        param = _field_path(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            param, message = (
                None,
                f"the body is not valid JSON: {error.get('ctx', {}).get('error')}",
            )
        elif error.get("type") == "extra_forbidden":
            message = f"{param}: not supported by this server"
        else:
            message = f"{param}: {error.get('msg')}" if param else f"the body: {error.get('msg')}"
        body = _error_body(" ".join(message.split()), param, None, "invalid_request_error")
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: fastapi.Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        body = _error_body(message, None, None, "invalid_request_error")
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def failed(request: fastapi.Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        body = _error_body("the server failed; see its log", None, None, "server_error")
        return JSONResponse(body, status_code=500)

    def model_card() -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": service.created,
            "owned_by": "tuneforge",
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise RequestError(
                f"model: unknown model {name!r}", "model", "model_not_found", status=404
            )
        return model_card()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        req: ChatCompletionRequest, request: fastapi.Request
    ) -> JSONResponse | StreamingResponse:
        service.check_model(req.model)
        _check_request(req)
        turns = _chat_turns(req.messages)
        try:
            text = render_prompt(turns, tokenizer)
        except Exception as exc:  # a chat template that refuses these turns (jinja raise)
            message = f"messages: the chat template refused them: {exc}"
            raise RequestError(" ".join(message.split()), "messages") from None
        prompt = service.encode(text, "messages")
        requested, param = req.max_completion_tokens, "max_completion_tokens"
        if requested is None:
            requested, param = req.max_tokens, "max_tokens"
        budget = service.budget(len(prompt), requested, param, "messages")
        stops = req.stop or []
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": [choice],
            }

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def events() -> AsyncIterator[str]:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                finish, generated = "length", 0
                async for piece, detok in service.stream(prompt, budget, stops):
                    if piece:
                        yield _sse(chunk({"content": piece}, None))
                    finish, generated = detok.finish_reason or finish, len(detok.tokens)
                yield _sse(chunk({}, finish))
                if include_usage:
                    usage = _usage(len(prompt), generated)
                    yield _sse({**chunk({}, None), "choices": [], "usage": usage})
                yield _sse("[DONE]")

            return _event_stream(_errors_as_events(events()))

        answer = await _unless_client_left(request, service.complete(prompt, budget, stops))
        message = {"role": "assistant", "content": answer.text}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [choice],
                "usage": _usage(len(prompt), answer.completion_tokens),
            }
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(
        req: CompletionRequest, request: fastapi.Request
    ) -> JSONResponse | StreamingResponse:
        service.check_model(req.model)
        _check_request(req)
        if not req.prompt:
            raise RequestError("prompt: must not be empty", "prompt")
        prompts = [service.encode(p, f"prompt[{i}]") for i, p in enumerate(req.prompt)]
        budgets = [service.budget(len(p), req.max_tokens, "max_tokens", "prompt") for p in prompts]
        stops = req.stop or []
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def body(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model_id,
                "choices": choices,
            }

        def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def events() -> AsyncIterator[str]:
                generated = 0
                # A list of prompts streams one after the other: streams never share a batch.
                for i, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True)):
                    async for piece, detok in service.stream(prompt, budget, stops):
                        finish = detok.finish_reason
                        if piece:
                            yield _sse(body([choice(i, piece, None)]))
                        if finish is not None:
                            yield _sse(body([choice(i, "", finish)]))
                            generated += len(detok.tokens)
                if include_usage:
                    usage = _usage(sum(map(len, prompts)), generated)
                    yield _sse({**body([]), "usage": usage})
                yield _sse("[DONE]")

            return _event_stream(_errors_as_events(events()))

        answers = await _unless_client_left(
            request,
            asyncio.gather(
                *(service.complete(p, b, stops) for p, b in zip(prompts, budgets, strict=True))
            ),
        )
        choices = [choice(i, a.text, a.finish_reason) for i, a in enumerate(answers)]
        generated = sum(a.completion_tokens for a in answers)
        return JSONResponse({**body(choices), "usage": _usage(sum(map(len, prompts)), generated)})

    return app


# --- loading and running ------------------------------------------------------------------------


def load_for_serving(model_uri: str, scratch: Path) -> tuple[Any, Any]:
    """Loads a model to serve: (model in eval mode on the best device, tokenizer).

    Args:
        model_uri: A registered version (`models:/NAME/3`, `models:/NAME@champion`, fetched
            through the registry `MLFLOW_TRACKING_URI` names) or a local checkpoint directory
            (a full checkpoint, or a PEFT adapter whose base `adapter_config.json` names).
        scratch: Where a registered version is downloaded; it must outlive the server.

    Returns:
        The model, an adapter merged into its base, and its tokenizer.

    Raises:
        ModelLoadError: The URI or directory does not hold a loadable model (one line).
    """
    # tuneforge.tasks.model_source.download_registry_model is this same call, but tasks sit
    # above this module in the import layers (pyproject's import-linter contract).
    if model_uri.startswith(REGISTRY_PREFIX):
        # As the version's pyfunc model loads it: in the dtype it was registered with
        # (model.dtype), an adapter merged onto its base.
        root = download(model_uri, scratch / "version")
        if read_manifest(root) is not None:
            try:
                model, tokenizer = load_registered(root, scratch / "base")
            except (OSError, ValueError) as exc:  # unreadable weights, a base that is gone
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelLoadError(f"{model_uri}: {first}") from exc
            return model.to(pick_device()).eval(), tokenizer
        checkpoint = materialize(root, scratch)  # a version registered before layout 1
    else:
        checkpoint = Path(model_uri).expanduser()
        if not checkpoint.is_dir():
            raise ModelLoadError(
                f"{model_uri}: no such checkpoint directory (and not a {REGISTRY_PREFIX} URI)"
            )
    try:
        # In the dtype the checkpoint was saved in, as serving engines load it.
        model, tokenizer = load_pretrained(checkpoint, dtype="auto")
    except ModelSourceError as exc:  # one error type for `tuneforge serve` to report
        raise ModelLoadError(str(exc)) from None
    if (checkpoint / "adapter_config.json").is_file():  # one merged model generates faster
        model = model.merge_and_unload()
    return model.to(pick_device()).eval(), tokenizer


def model_id_for(model_uri: str) -> str:
    """The id clients name: the URI without `models:/`, or the directory's name."""
    if model_uri.startswith(REGISTRY_PREFIX):
        return model_uri.removeprefix(REGISTRY_PREFIX)
    return Path(model_uri).expanduser().resolve().name


def serve(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_new_tokens: int = 256,
    max_batch: int = 8,
    num_threads: int | None = None,
) -> None:
    """Loads `model_uri` and serves it until interrupted (blocking).

    Args:
        model_uri: A registered version or a local checkpoint directory (`load_for_serving`).
        host: The address to bind. The server has no authentication: keep the default
            (localhost only) unless a proxy in front of it authenticates.
        port: The port to bind.
        max_new_tokens: A request's answer length when it names none, and the most it may ask.
        max_batch: The most non-streaming requests generated together in one batch.
        num_threads: CPU threads torch computes with. Default: all cores but one, which is
            left to the HTTP side (parsing, tokenizing, streaming).
    """
    import os

    import torch
    import uvicorn

    # Measured on 2 cores, tiny model, 4 clients x 8 chat requests (2026-12-06): idle, 1 torch
    # thread was as fast as 2 (0.24 s against 0.31 s batched); beside a busy 4-thread torch
    # process, 0.43 s against 1.14 s streamed; beside another test suite, 0.3 s against 12 s.
    # torch's threads wait on each other, and lose whenever anything else takes a core.
    torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 2) - 1))
    with tempfile.TemporaryDirectory(prefix="tuneforge-serve-") as scratch:
        model, tokenizer = load_for_serving(model_uri, Path(scratch))
        model_id = model_id_for(model_uri)
        app = create_app(
            model, tokenizer, model_id, max_new_tokens=max_new_tokens, max_batch=max_batch
        )
        if host not in _LOOPBACK:
            log.warning(
                "serving on %s without authentication: anyone who can reach it can use it", host
            )
        print(
            f"serving {model_id} on {model.device} ({torch.get_num_threads()} CPU threads) "
            f"at http://{host}:{port}/v1",
            flush=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="info")
