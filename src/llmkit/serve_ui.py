"""`llmkit serve --ui`: a Gradio web demo at /ui, on the API's own app and port. A model with a chat template gets a
chat, another generation model a completion box, a classifier its labels, an embedding model its vector. Replies take
the API's path: the same request parsing (the server's decoding flags, the chat template), the same queue and
batching worker, streamed as they are generated; a task head's answer is what its route answers.

Gradio is imported only here, when the demo is built; its telemetry and version check are off (no network use).
"""

import hmac
import os

from llmkit.errors import ConfigError
from llmkit.serve_errors import ApiError

UI_PATH = "/ui"


def mount_ui(app, api) -> None:
    """Mount the demo for `api` (llmkit.serve's request handling of `app`) at /ui, and send / there."""
    # read by every Blocks gradio builds, the ones inside ChatInterface too
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError("llmkit serve --ui needs gradio, which is not installed",
                          hint="pip install 'llmkit[serve]'") from None
    from starlette.responses import RedirectResponse

    title = f"llmkit · {api.model_id}"
    if api.task_model:
        demo = _head_box(api, gr, title)
    elif api.generator.chat_template:
        demo = gr.ChatInterface(_chat_reply(api, gr), title=title, analytics_enabled=False, concurrency_limit=None,
                                description="The same model answers at /v1/chat/completions.")
    else:
        demo = _completion_box(api, gr, title)
    # with an API key, the demo asks for it too (as the password; any user name)
    auth = (lambda _user, password: hmac.compare_digest(password.encode(), api.api_key.encode())) \
        if api.api_key else None
    # no run history: its page offers to upload past runs to a Hugging Face bucket
    gr.mount_gradio_app(app, demo, path=UI_PATH, auth=auth, ssr_mode=False, mcp_server=False, run_history=False)
    app.add_api_route("/", lambda: RedirectResponse(f"{UI_PATH}/"), include_in_schema=False)


def _chat_reply(api, gr):
    async def reply(message: str, history: list[dict]):
        messages = [{"role": m["role"], "content": m["content"]} for m in history]
        async for text in _streamed(api, gr, {"messages": [*messages, {"role": "user", "content": message}]},
                                    chat=True):
            yield text

    return reply


def _completion_box(api, gr, title: str):
    async def complete(prompt: str):
        async for text in _streamed(api, gr, {"prompt": prompt}, chat=False):
            yield text

    return _form(gr, title, "/v1/completions", "Prompt", "Complete", complete,
                 lambda: gr.Textbox(label="Completion", lines=8, interactive=False))


def _head_box(api, gr, title: str):
    """A classifier's labels and scores, or an embedding model's vector, as /v1/classify or /v1/embeddings give
    them."""
    from llmkit.serve_heads import HEAD_ROUTES, head_responder

    answer = head_responder(api)
    task = api.task_model.task
    if task == "text-classification":
        labels = len(api.task_model.model.config.id2label)

        async def classify(text: str) -> dict[str, float]:
            row = (await _answered(answer, gr, {"input": text, "top_k": labels}))["data"][0]
            return {ranked["label"]: ranked["score"] for ranked in row["scores"]}

        return _form(gr, title, HEAD_ROUTES[task], "Text", "Classify", classify,
                     lambda: gr.Label(label="Labels", num_top_classes=labels))

    async def embed(text: str) -> dict:
        vector = (await _answered(answer, gr, {"input": text}))["data"][0]["embedding"]
        return {"dimensions": len(vector), "embedding": vector}

    return _form(gr, title, HEAD_ROUTES[task], "Text", "Embed", embed, lambda: gr.JSON(label="Embedding"))


async def _answered(answer, gr, body: dict) -> dict:
    try:
        return await answer(body)
    except ApiError as exc:
        raise gr.Error(exc.message) from None


def _form(gr, title: str, route: str, input_label: str, button_label: str, fn, output):
    """A text box, a button and `output()`: `fn` of the text fills the output (on the button, or Enter)."""
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nThe same model answers at {route}.")
        text = gr.Textbox(label=input_label, lines=4, autofocus=True)
        button = gr.Button(button_label, variant="primary")
        gr.on([button.click, text.submit], fn, text, output(), concurrency_limit=None)
    return demo


async def _streamed(api, gr, body: dict, chat: bool):
    """The reply so far, each time it grows; the API's refusals as the demo's error pop-ups."""
    try:
        parsed = api.parse(body, chat)
        pieces, result, release = api.submit_streamed(parsed.job)
    except (ApiError, ConfigError) as exc:
        raise gr.Error(exc.message) from None
    text = ""
    try:
        while (piece := await pieces.get()) is not None:
            text += piece
            yield text
        try:
            result.result()
        except Exception as exc:   # noqa: BLE001 - the worker's error belongs to this reply
            raise gr.Error(str(exc) or "the reply was stopped before it started") from None
    finally:   # also when the page went away mid-reply: its row of the batch stops
        release()
