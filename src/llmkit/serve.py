"""An OpenAI-compatible HTTP API over a loaded Generator: GET /health and /v1/models, POST /v1/completions and
/v1/chat/completions (with `stream: true`, server-sent events in OpenAI's chunk format ending with `data: [DONE]`).

Requests decode as `llmkit generate` does (the same Generator: chat template, stop strings, the model's
generation_config under the server's flags, under the request's own values). They wait in a bounded queue for one
worker thread that owns the model; it generates for up to max_batch_size waiting requests with the same decoding
values at once (dynamic batching, left-padded), so greedy output equals the request served alone. A request's
deadline, or its client leaving mid-stream, stops its row of the batch and nothing else.

A classifier or an embedding model is served instead at POST /v1/classify or /v1/embeddings (llmkit.serve_heads).
With `ui` on, llmkit.serve_ui mounts a web demo at /ui on the same app.

Core code: it never prints; `llmkit serve` runs the app with uvicorn. Errors have OpenAI's shape,
{"error": {"message", "type", "code", "param"}}.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmkit.config import ServeConfig
from llmkit.errors import ConfigError
from llmkit.inference.generator import Generator, Sequence
from llmkit.serve_errors import ApiError

GENERATION_TASKS = ("text-generation", "summarization", "translation")
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "length": "length", "interrupted": "length"}


def _server_stopping() -> ApiError:
    return ApiError(503, "the server is stopping", "server_error", "server_stopping")


class _Stopped(Exception):
    """A job that was stopped (its deadline, its client gone) before it reached the model."""


# ------------------------------------------------------------------------------------------ the batching worker

@dataclass(eq=False)
class Job:
    ids: list[int]                  # the prompt's token ids, fitted to the context
    gc: Any                         # its GenerationConfig
    key: str                        # jobs with the same key can share a batch (same decoding values and seed)
    seed: int | None = None
    on_text: Callable[[str], None] | None = None   # streamed text, called from the worker thread
    stop: threading.Event = field(default_factory=threading.Event)
    result: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class BatchWorker:
    """One thread that owns the model. It takes the oldest waiting job and up to max_batch_size - 1 more with the
    same key (in arrival order), and generates for them in one batch."""

    def __init__(self, generator: Generator, max_batch_size: int, max_queue: int):
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.served = 0                 # requests generated for, and the batches they took
        self.batches = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llmkit-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise _server_stopping()
            if len(self.waiting) >= self.max_queue:
                raise ApiError(503, f"the server is busy: {len(self.waiting)} requests are already waiting",
                               "server_error", "queue_full")
            self.waiting.append(job)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self.waiting:
                job.result.set_exception(_server_stopping())
            self.waiting.clear()
            for job in self.running:
                job.stop.set()
            self._cond.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self.waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self.waiting.popleft()
            batch = [first]
            for job in list(self.waiting):
                if len(batch) == self.max_batch_size:
                    break
                if job.key == first.key:
                    self.waiting.remove(job)
                    batch.append(job)
            self.running = batch
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            for job in batch:
                if job.stop.is_set():
                    job.result.set_exception(_Stopped("stopped before it reached the model"))
            live = [job for job in batch if not job.stop.is_set()]
            if live:
                self._generate(live)
            with self._cond:
                self.running = []

    def _generate(self, batch: list[Job]) -> None:
        first = batch[0]
        if first.seed is not None:
            import torch

            torch.manual_seed(first.seed)
        else:
            self.generator.seed_sampling(first.gc)
        try:
            sequences, _ = self.generator.generate_ids([job.ids for job in batch], first.gc,
                                                       on_text=[job.on_text for job in batch],
                                                       stop_event=[job.stop for job in batch])
        except Exception as exc:   # noqa: BLE001 - it belongs to these requests; the worker serves the next ones
            for job in batch:
                job.result.set_exception(exc)
            return
        self.served += len(batch)
        self.batches += 1
        for job, group in zip(batch, sequences):
            job.result.set_result(group[0])


# ------------------------------------------------------------------------------------------------ the requests

@dataclass
class _Parsed:
    job: Job
    prompt_tokens: int
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, kind: type, low: float | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ApiError(400, f"'{name}' must be {'a number' if kind is float else 'an integer'} (got {value!r})",
                       param=name)
    if low is not None and value < low:
        raise ApiError(400, f"'{name}' must be at least {low} (got {value})", param=name)
    return value


def _decoding_values(body: dict, limit: int) -> dict[str, Any]:
    """The request's decoding values, as generate's flags name them. temperature 0 means greedy (OpenAI's
    convention); top_k, min_p and repetition_penalty are accepted as extras (vLLM's names)."""
    values: dict[str, Any] = {}
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, int, 1)
    if max_tokens is not None:
        if max_tokens > limit:
            raise ApiError(400, f"'{name}' is {max_tokens}, more than this server allows ({limit}, --max-tokens)",
                           param=name, code="max_tokens_exceeded")
        values["max_new_tokens"] = max_tokens
    temperature = _number(body, "temperature", float, 0)
    if temperature == 0:
        values["do_sample"] = False
    elif temperature is not None:
        values.update(do_sample=True, temperature=float(temperature))
    for key, kind in (("top_p", float), ("top_k", int), ("min_p", float), ("repetition_penalty", float)):
        value = _number(body, key, kind)
        if value is not None:
            values[key] = value
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ApiError(400, "'stop' must be a non-empty string or a list of them", param="stop")
        values["stop_strings"] = stops
    if (body.get("n") or 1) != 1:
        raise ApiError(400, "'n' must be 1: this server returns one choice per request", param="n")
    return values


def _message_text(message: Any, index: int) -> tuple[str, str]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(400, f"messages[{index}] must be an object with a 'role' and a 'content'", param="messages")
    content = message.get("content")
    if isinstance(content, list):   # content parts: only text parts carry anything a text model can read
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(400, f"messages[{index}].content: only text parts are supported", param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts",
                       param="messages")
    return message["role"], content


class _Api:
    """What the routes share: the model (a Generator and its worker, or a TaskModel), the limits."""

    def __init__(self, model, cfg: ServeConfig, api_key: str | None):
        self.generator = model if isinstance(model, Generator) else None
        self.task_model = None if self.generator else model
        self.cfg = cfg
        self.api_key = api_key
        self.model_id = served_model_id(cfg)
        self.created = int(time.time())
        self.worker = BatchWorker(model, cfg.max_batch_size, cfg.max_queue) if self.generator else None
        self.head_lock = threading.Lock()   # a TaskModel runs one request at a time (its tokenizer's state is shared)

    def check_key(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                           code="invalid_api_key")

    async def read_json(self, request) -> dict[str, Any]:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_large = ApiError(413, f"the request body is larger than {limit:,} bytes (--max-body-bytes)",
                             code="request_too_large")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        model = data.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "'model' is required: the id /v1/models lists", param="model")
        if model != self.model_id:
            raise ApiError(404, f"the model {model!r} does not exist: this server serves {self.model_id!r}",
                           code="model_not_found", param="model")
        return data

    def parse(self, body: dict[str, Any], chat: bool) -> _Parsed:
        generator = self.generator
        values = _decoding_values(body, self.cfg.max_tokens)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "'messages' must be a non-empty list", param="messages")
            turns = [_message_text(m, i) for i, m in enumerate(messages)]
            text = generator.render_messages([{"role": role, "content": content} for role, content in turns])
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ApiError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
            text = prompt
        gc = generator.generation_config(generator.user_params(values), warn=False)
        if gc.max_new_tokens is None or gc.max_new_tokens > self.cfg.max_tokens:
            gc.max_new_tokens = self.cfg.max_tokens   # the model's own default may be more than the server allows
        ids = generator.encode([text], chat)[0][0]
        if not ids:
            raise ApiError(400, "the prompt is empty after tokenization", param="messages" if chat else "prompt")
        context = generator.context
        if context is not None and not generator.encoder_decoder and len(ids) + gc.max_new_tokens > context:
            raise ApiError(400, f"this model's context is {context} tokens, and the prompt has {len(ids)} with "
                                f"{gc.max_new_tokens} more to generate: shorten the prompt or lower max_tokens",
                           code="context_length_exceeded", param="messages" if chat else "prompt")
        seed = _number(body, "seed", int)
        key = json.dumps([generator.params_of(gc), seed], sort_keys=True, default=str)
        options = body.get("stream_options") or {}
        return _Parsed(job=Job(ids=ids, gc=gc, key=key, seed=seed), prompt_tokens=len(ids),
                       stream=bool(body.get("stream")),
                       include_usage=bool(isinstance(options, dict) and options.get("include_usage")))

    def usage(self, parsed: _Parsed, sequence: Sequence) -> dict[str, int]:
        return {"prompt_tokens": parsed.prompt_tokens, "completion_tokens": sequence.completion_tokens,
                "total_tokens": parsed.prompt_tokens + sequence.completion_tokens}

    async def complete(self, parsed: _Parsed) -> Sequence:
        """Run a job to its end; its deadline stops it (HTTP 504)."""
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(self.cfg.request_timeout, parsed.job.stop.set)
        self.worker.submit(parsed.job)
        try:
            sequence = await asyncio.wrap_future(parsed.job.result)
        except _Stopped:
            sequence = None
        finally:
            deadline.cancel()
            parsed.job.stop.set()   # a handler cancelled while waiting: the worker skips its job
        if sequence is None or sequence.finish_reason == "interrupted":
            raise ApiError(504, f"the request took longer than {self.cfg.request_timeout:g} s (--request-timeout)",
                           "server_error", "timeout")
        return sequence

    def submit_streamed(self, job: Job) -> tuple[asyncio.Queue, asyncio.Future, Callable[[], None]]:
        """Submit `job` now (a full queue raises here) with its text streamed: the queue gets each piece, then
        None once the returned future holds its result. Call the returned `release` when done with it, or when its
        client has gone: it stops the job's row of the batch."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        job.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
        result = asyncio.wrap_future(job.result)
        result.add_done_callback(lambda _: pieces.put_nowait(None))
        deadline = loop.call_later(self.cfg.request_timeout, job.stop.set)
        self.worker.submit(job)

        def release() -> None:
            deadline.cancel()
            job.stop.set()

        return pieces, result, release

    def stream(self, parsed: _Parsed, chunk: Callable[[dict], dict], first_delta: dict | None):
        """Submit the job now (a full queue is still an HTTP error) and return the server-sent events: one chunk
        per piece of text, a last one with the finish reason, the usage if asked, then `data: [DONE]`."""
        from fastapi.responses import StreamingResponse

        pieces, result, release = self.submit_streamed(parsed.job)

        async def events():
            try:
                if first_delta is not None:
                    yield _event(chunk({"delta": first_delta, "finish_reason": None}))
                while (text := await pieces.get()) is not None:
                    yield _event(chunk({"delta": {"content": text}, "text": text, "finish_reason": None}))
                try:
                    sequence = result.result()
                except _Stopped:
                    reason, sequence = "length", None
                except Exception as exc:   # noqa: BLE001 - the status line is sent: the error goes in the stream
                    error = exc if isinstance(exc, ApiError) else ApiError(500, str(exc), "server_error")
                    yield _event(error.body())
                    return
                else:
                    reason = FINISH_REASONS[sequence.finish_reason]
                yield _event(chunk({"delta": {}, "text": "", "finish_reason": reason}))
                if parsed.include_usage and sequence is not None:
                    yield _event({**chunk(None), "choices": [], "usage": self.usage(parsed, sequence)})
                yield "data: [DONE]\n\n"
            finally:   # also when the client went away (the response is cancelled): its row of the batch stops
                release()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(document: dict) -> str:
    return f"data: {json.dumps(document, ensure_ascii=False)}\n\n"


def served_model_id(cfg: ServeConfig) -> str:
    """The id clients send as `model`: the adapter when there is one (it is what was trained), else the model."""
    return cfg.adapter or cfg.model


def load_served_model(cfg: ServeConfig, reporter=None):
    """What serve runs: a TaskModel for a classifier or an embedding model (its --task, or its head), else the
    Generator."""
    from llmkit.inference.heads import TaskModel, detect_task
    from llmkit.serve_heads import HEAD_ROUTES

    cfg = detect_task(cfg)
    return TaskModel(cfg, reporter) if cfg.task in HEAD_ROUTES else Generator(cfg, reporter)


def create_app(model, cfg: ServeConfig, api_key: str | None = None):
    """The FastAPI app serving `model` (a Generator, or a TaskModel for a task of HEAD_ROUTES); a Generator's worker
    thread runs while the app runs (the lifespan)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from llmkit.serve_heads import HEAD_ROUTES, add_head_route

    api = _Api(model, cfg, api_key)
    if model.task not in (GENERATION_TASKS if api.generator else HEAD_ROUTES):
        raise ConfigError(f"{model.name} is a {model.task} model: serve has no endpoint for it",
                          hint=f"serve a model for {', '.join((*GENERATION_TASKS, *HEAD_ROUTES))} (--task "
                               "feature-extraction serves any model's embeddings)")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if api.worker:
            api.worker.start()
        yield
        if api.worker:
            await asyncio.to_thread(api.worker.close)

    app = FastAPI(title="llmkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(ConfigError)
    async def decoding_error(request, exc: ConfigError):   # transformers refused the decoding values
        return JSONResponse(ApiError(400, exc.message).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):   # unknown route, wrong method
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code=str(exc.status_code)).body(),
                            status_code=exc.status_code)

    @app.get("/health")
    async def health():
        worker = api.worker
        if worker is None:
            return {"status": "ok", "model": api.model_id, "task": model.task}
        return {"status": "ok", "model": api.model_id, "waiting": len(worker.waiting),
                "generating": len(worker.running), "served": worker.served, "batches": worker.batches}

    @app.get("/v1/models")
    async def models(request: Request):
        api.check_key(request)
        return {"object": "list", "data": [{"id": api.model_id, "object": "model", "created": api.created,
                                            "owned_by": "llmkit"}]}

    if api.task_model:
        add_head_route(app, api)
    else:
        @app.post("/v1/completions")
        async def completions(request: Request):
            return await _respond(api, request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            return await _respond(api, request, chat=True)

    if cfg.ui:
        from llmkit.serve_ui import mount_ui

        mount_ui(app, api)
    return app


async def _respond(api: _Api, request, chat: bool):
    api.check_key(request)
    parsed = api.parse(await api.read_json(request), chat)
    prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
    head = {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": api.model_id}
    if parsed.stream:
        def chunk(choice: dict | None) -> dict:
            if choice is None:
                return {**head, "object": f"{kind}.chunk" if chat else kind}
            if chat:
                body = {"index": 0, "delta": choice["delta"], "finish_reason": choice["finish_reason"],
                        "logprobs": None}
            else:
                body = {"index": 0, "text": choice.get("text", ""), "finish_reason": choice["finish_reason"],
                        "logprobs": None}
            return {**head, "object": f"{kind}.chunk" if chat else kind, "choices": [body]}

        return api.stream(parsed, chunk, {"role": "assistant", "content": ""} if chat else None)
    sequence = await api.complete(parsed)
    reason = FINISH_REASONS[sequence.finish_reason]
    choice = {"index": 0, "message": {"role": "assistant", "content": sequence.text}} if chat \
        else {"index": 0, "text": sequence.text}
    return {**head, "object": kind, "choices": [{**choice, "finish_reason": reason, "logprobs": None}],
            "usage": api.usage(parsed, sequence)}
