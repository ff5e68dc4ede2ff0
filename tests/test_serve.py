"""`llmkit serve`: a real server on a free loopback port, spoken to with the official `openai` client. Answers are
checked against transformers' own greedy `model.generate` on the same prompt, computed here."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, build_llama

API_KEY = "sk-test"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_dir):
    """A tiny LLaMA with a chat template; a wide init (varied greedy tokens, no near-ties between batched and
    unbatched logits) and a long context (a long generation to interrupt)."""
    return build_llama(tmp_path_factory.mktemp("serve") / "llama", bpe_dir, initializer_range=0.2,
                       max_position_embeddings=2048)


@pytest.fixture(scope="module")
def reference(model_dir):
    """Greedy new tokens and text from transformers alone, for a prompt's ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)

    def generate(ids: list[int], max_new_tokens: int) -> tuple[str, int]:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        return tok.decode(new, skip_special_tokens=True), len(new)

    def chat(messages, max_new_tokens):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return generate(list(ids["input_ids"] if hasattr(ids, "keys") else ids), max_new_tokens)

    def completion(prompt, max_new_tokens):
        return generate(tok(prompt)["input_ids"], max_new_tokens)

    return chat, completion


def _start(model_dir, **settings):
    import uvicorn

    from llmkit.config import ServeConfig
    from llmkit.inference.generator import Generator
    from llmkit.runtime import free_port
    from llmkit.serve import create_app

    cfg = ServeConfig(model=str(model_dir), **settings)
    app = create_app(Generator(cfg), cfg, api_key=API_KEY)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _until(lambda: server.started or not thread.is_alive())
    assert server.started, "the server did not start"
    return server, thread, f"http://127.0.0.1:{server.config.port}"


@pytest.fixture(scope="module")
def server(model_dir):
    server, thread, url = _start(model_dir, max_tokens=64, max_body_bytes=16384, max_batch_size=8)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def _client(url, key=API_KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def _until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


def _health(url) -> dict:
    import httpx

    response = httpx.get(f"{url}/health", timeout=10)
    assert response.status_code == 200
    return response.json()


def test_models_lists_the_served_model(server, model_dir):
    assert [m.id for m in _client(server).models.list()] == [str(model_dir)]


def test_chat_and_completions_equal_greedy_generate_streamed_or_not(server, model_dir, reference):
    chat_reference, completion_reference = reference
    client = _client(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The for statement"}]
    text, count = chat_reference(messages, 12)
    assert count > 3 and text.strip()

    answer = client.chat.completions.create(model=str(model_dir), messages=messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == text
    assert answer.usage.completion_tokens == count
    assert answer.choices[0].finish_reason == ("length" if count == 12 else "stop")

    chunks = list(client.chat.completions.create(model=str(model_dir), messages=messages, max_tokens=12,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1   # streamed, not one piece
    assert chunks[-1].usage.completion_tokens == count and chunks[-1].usage.prompt_tokens == answer.usage.prompt_tokens

    prompt = "A class definition"
    text, count = completion_reference(prompt, 10)
    done = client.completions.create(model=str(model_dir), prompt=prompt, max_tokens=10)
    assert (done.choices[0].text, done.usage.completion_tokens) == (text, count)
    streamed = client.completions.create(model=str(model_dir), prompt=prompt, max_tokens=10, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_sixteen_concurrent_clients_are_batched_and_get_their_unbatched_answers(server, model_dir, reference):
    chat_reference, _ = reference
    prompts = [f"Tell me about {word}" + " please" * (i % 5) for i, word in
               enumerate("loops classes lists tuples sets dicts files bytes strings ints floats "
                         "modules imports yields lambdas scopes".split())]
    expected = [chat_reference([{"role": "user", "content": p}], 8)[0] for p in prompts]
    before = _health(server)
    answers: dict[int, str] = {}

    def ask(i):
        reply = _client(server).chat.completions.create(model=str(model_dir), max_tokens=8,
                                                        messages=[{"role": "user", "content": prompts[i]}])
        answers[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [answers.get(i) for i in range(16)] == expected
    after = _health(server)
    assert after["served"] - before["served"] == 16
    assert after["batches"] - before["batches"] < 16   # waiting requests shared batches


def test_bad_requests_get_openai_errors_and_leave_the_server_healthy(server, model_dir):
    import httpx
    import openai

    client = _client(server)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    user = [{"role": "user", "content": "Hi"}]

    def status_of(call) -> int:
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        body = caught.value.body
        assert set(body) >= {"message", "type", "code"}, body   # openai's client hands over error's fields
        return caught.value.status_code

    cases = {
        "unknown model": (lambda: client.chat.completions.create(model="gpt-4", messages=user), 404),
        "too many tokens": (lambda: client.chat.completions.create(model=str(model_dir), messages=user,
                                                                   max_tokens=65), 400),
        "context overflow": (lambda: client.completions.create(model=str(model_dir), prompt="word " * 2100,
                                                               max_tokens=8), 400),
        "wrong API key": (lambda: _client(server, "sk-wrong").chat.completions.create(model=str(model_dir),
                                                                                     messages=user), 401),
    }
    for name, (call, status) in cases.items():
        assert status_of(call) == status, name
        assert _health(server)["status"] == "ok", name
    raw = {
        "malformed JSON": (dict(content=b'{"model": ', headers=headers), 400),
        "no API key": (dict(json={"model": str(model_dir), "messages": user}), 401),
        "body too large": (dict(json={"model": str(model_dir), "prompt": "x" * 20000}, headers=headers), 413),
    }
    for name, (request, status) in raw.items():
        response = httpx.post(f"{server}/v1/chat/completions", timeout=10, **request)
        assert response.status_code == status, (name, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "code"}, name
        assert _health(server)["status"] == "ok", name
    reply = client.chat.completions.create(model=str(model_dir), messages=user, max_tokens=2)
    assert reply.choices[0].message.content is not None


def test_full_queue_is_503_and_a_client_leaving_mid_stream_stops_its_generation(model_dir):
    import httpx

    server, thread, url = _start(model_dir, max_tokens=1500, max_batch_size=1, max_queue=1)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    long = {"model": str(model_dir), "prompt": "The for statement", "max_tokens": 1500}
    try:
        started = time.perf_counter()
        whole = httpx.post(f"{url}/v1/completions", json=long, headers=headers, timeout=120).json()
        full_s = time.perf_counter() - started
        assert whole["usage"]["completion_tokens"] == 1500, "the long generation ended early: pick another prompt"

        with httpx.stream("POST", f"{url}/v1/completions", json={**long, "stream": True}, headers=headers,
                          timeout=60) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"]
            waiting = threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",),
                                       kwargs=dict(json={**long, "max_tokens": 2}, headers=headers, timeout=60))
            waiting.start()
            _until(lambda: _health(url)["waiting"] == 1)
            refused = httpx.post(f"{url}/v1/completions", json={**long, "max_tokens": 2}, headers=headers,
                                 timeout=10)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
            left = time.perf_counter()
        waiting.join(timeout=60)
        _until(lambda: not _health(url)["generating"] and not _health(url)["waiting"])
        assert time.perf_counter() - left < full_s / 3, (time.perf_counter() - left, full_s)
        assert _health(url)["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_llmkit_serve_with_exit_code_0(model_dir, stop):
    import httpx

    from llmkit.runtime import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", "-m", str(model_dir), "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["status"] == "ok":
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
