"""`llmkit serve` for task heads: /v1/embeddings (spoken to with the official `openai` client) and /v1/classify,
checked against the hidden states and logits of transformers' own models, pooled and softmaxed here."""

import base64

import numpy as np
import pytest

TEXTS = ["The for statement", "A class definition is an executable statement", "Lists"]


@pytest.fixture
def serve(serving):
    from llmkit.config import ServeConfig

    return lambda model_dir, **settings: serving(ServeConfig(model=str(model_dir), max_batch_size=2, **settings))


def _tokens(model_dir) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [len(tok(text)["input_ids"]) for text in TEXTS]


def test_embeddings_are_the_mean_of_the_hidden_states_over_each_text(serve, bert_dir):
    import httpx
    import torch
    from openai import OpenAI
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(bert_dir).eval(), AutoTokenizer.from_pretrained(bert_dir)
    expected = []
    for text in TEXTS:   # one at a time: no padding to mask
        with torch.no_grad():
            expected.append(model(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0).numpy())

    url = serve(bert_dir, task="feature-extraction")   # max_batch_size 2: the 3 texts take two chunks
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
    answer = client.embeddings.create(model=str(bert_dir), input=TEXTS)   # base64 on the wire, the client's default
    assert [d.index for d in answer.data] == [0, 1, 2]
    np.testing.assert_allclose(np.array([d.embedding for d in answer.data]), np.stack(expected), atol=1e-5)
    assert answer.usage.prompt_tokens == sum(_tokens(bert_dir))

    floats = httpx.post(f"{url}/v1/embeddings", timeout=30, json={
        "model": str(bert_dir), "input": TEXTS[0], "encoding_format": "float"}).json()
    assert floats["object"] == "list" and floats["data"][0]["object"] == "embedding"
    np.testing.assert_allclose(floats["data"][0]["embedding"], expected[0], atol=1e-5)
    raw = httpx.post(f"{url}/v1/embeddings", timeout=30, json={
        "model": str(bert_dir), "input": TEXTS[0], "encoding_format": "base64"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(raw), dtype="<f4"), expected[0], atol=1e-5)

    for body, status in (({"input": []}, 400), ({"input": "x", "encoding_format": "int8"}, 400),
                         ({"input": "x", "dimensions": 3}, 400)):
        response = httpx.post(f"{url}/v1/embeddings", timeout=30, json={"model": str(bert_dir), **body})
        assert response.status_code == status, (body, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "code"}
    chat = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={"model": str(bert_dir), "messages": []})
    assert chat.status_code == 404   # an embedding model does not chat
    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok", "model": str(bert_dir),
                                                             "task": "feature-extraction"}


def test_classify_gives_the_softmax_label_and_ranked_scores_of_each_text(serve, bert_cls_dir):
    import httpx
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(bert_cls_dir).eval()
    tok = AutoTokenizer.from_pretrained(bert_cls_dir)
    expected = []
    for text in TEXTS:
        with torch.no_grad():
            probs = torch.softmax(model(**tok(text, return_tensors="pt")).logits[0].double(), -1).tolist()
        ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
        expected.append([(model.config.id2label[i], probs[i]) for i in ranked])
    assert len(expected[0]) > 1

    url = serve(bert_cls_dir)   # the head says the task
    answer = httpx.post(f"{url}/v1/classify", timeout=30, json={
        "model": str(bert_cls_dir), "input": TEXTS, "top_k": 2}).json()
    assert answer["usage"]["prompt_tokens"] == sum(_tokens(bert_cls_dir))
    for row, want in zip(answer["data"], expected, strict=True):
        assert row["label"] == want[0][0] and row["score"] == pytest.approx(want[0][1], abs=1e-5)
        assert [s["label"] for s in row["scores"]] == [label for label, _ in want[:2]]
        assert [s["score"] for s in row["scores"]] == pytest.approx([p for _, p in want[:2]], abs=1e-5)
    one = httpx.post(f"{url}/v1/classify", timeout=30, json={"model": str(bert_cls_dir), "input": TEXTS[1]}).json()
    assert set(one["data"][0]) == {"index", "label", "score"}
    assert one["data"][0]["label"] == expected[1][0][0]

    for body in ({"input": 3}, {"input": TEXTS, "text_pair": ["only one"]}, {"input": "x", "top_k": 0}):
        response = httpx.post(f"{url}/v1/classify", timeout=30, json={"model": str(bert_cls_dir), **body})
        assert response.status_code == 400, (body, response.text)
