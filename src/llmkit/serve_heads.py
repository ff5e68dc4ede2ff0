"""`llmkit serve` for a model whose task is not generation: POST /v1/embeddings (OpenAI's embeddings request and
response, vectors pooled as `llmkit generate --task feature-extraction` pools them) and POST /v1/classify (each input's
label and score as generate's text-classification JSON, with the ranked `scores` when `top_k` is given).

The TaskModel runs one request at a time in a worker thread, its inputs in chunks of --max-batch-size; inputs longer
than the model's context are truncated, as generate truncates them.
"""

import asyncio
import base64
from collections.abc import Awaitable, Callable

from llmkit.serve_errors import ApiError

# the route of each task head serve runs
HEAD_ROUTES = {"feature-extraction": "/v1/embeddings", "text-classification": "/v1/classify"}


def add_head_route(app, api) -> None:
    """The route of `api.task_model`'s task (HEAD_ROUTES)."""
    from fastapi import Request

    answer = head_responder(api)

    async def head(request: Request):
        api.check_key(request)
        return await answer(await api.read_json(request))

    app.add_api_route(HEAD_ROUTES[api.task_model.task], head, methods=["POST"])


def head_responder(api) -> Callable[[dict], Awaitable[dict]]:
    """The response to a request body for `api.task_model`'s task: the route's, and the web demo's."""
    tm, size = api.task_model, api.cfg.max_batch_size
    respond = _embeddings if tm.task == "feature-extraction" else _classify

    def run(rows_of: Callable[[slice], list], texts: list[str], pairs: list[str] | None = None):
        """rows_of(chunk) for each chunk of --max-batch-size inputs, and how many tokens the model read."""
        with api.head_lock:
            rows = [row for start in range(0, len(texts), size) for row in rows_of(slice(start, start + size))]
            lengths = [len(ids) for ids in tm.tokenizer(texts, pairs)["input_ids"]]
        return rows, sum(min(length, tm.max_length) for length in lengths)

    async def answer(body: dict) -> dict:
        return await respond(api, body, run)

    return answer


def _texts(body: dict, name: str, required: bool = True) -> list[str] | None:
    value = body.get(name)
    if value is None and not required:
        return None
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"'{name}' must be a string or a non-empty list of strings", param=name)
    return texts


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def _embeddings(api, body: dict, run) -> dict:
    import numpy as np

    texts = _texts(body, "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"'encoding_format' must be float or base64 (got {encoding!r})", param="encoding_format")
    tm = api.task_model
    vectors, tokens = await asyncio.to_thread(run, lambda part: list(tm.embed(texts[part])), texts)
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != len(vectors[0]):
        raise ApiError(400, f"'dimensions' must be this model's {len(vectors[0])}", param="dimensions")

    def encoded(vector):   # base64: the little-endian float32 bytes, as OpenAI sends them
        if encoding == "base64":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        return [float(v) for v in vector]

    return {"object": "list", "model": api.model_id, "usage": _usage(tokens),
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)]}


async def _classify(api, body: dict, run) -> dict:
    texts = _texts(body, "input")
    pairs = _texts(body, "text_pair", required=False)
    if pairs is not None and len(pairs) != len(texts):
        raise ApiError(400, f"'text_pair' has {len(pairs)} texts for {len(texts)} inputs", param="text_pair")
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ApiError(400, f"'top_k' must be an integer of at least 1 (got {top_k!r})", param="top_k")
    tm = api.task_model
    results, tokens = await asyncio.to_thread(
        run, lambda part: tm.classify(texts[part], pairs[part] if pairs else None, top_k), texts, pairs)
    return {"object": "list", "model": api.model_id, "usage": _usage(tokens),
            "data": [{"index": i, **result} for i, result in enumerate(results)]}
