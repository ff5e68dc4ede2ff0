"""`llmkit serve --ui`: the Gradio demo on the API's own port, driven in a real headless Chromium (Debian's, through
its own chromedriver: no browser download). What the page shows is checked against transformers alone, computed
here: greedy `model.generate` on the chat-templated (or plain) prompt, a classifier's softmax, mean-pooled hidden
states."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import build_llama

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_dir):
    """A tiny LLaMA with a chat template; a wide init gives varied greedy tokens."""
    return build_llama(tmp_path_factory.mktemp("serve-ui") / "llama", bpe_dir, initializer_range=0.2)


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory, bpe_dir):
    """The same kind of model without a chat template: a base model."""
    path = build_llama(tmp_path_factory.mktemp("serve-ui") / "base", bpe_dir, initializer_range=0.2)
    (path / "chat_template.jinja").unlink()
    return path


def _greedy_reply(model_dir, messages: list[dict] | None = None, prompt: str | None = None) -> str:
    """transformers' greedy new text for chat messages (chat-templated) or a plain prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    if messages is not None:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    else:
        ids = tok(prompt)["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


@pytest.fixture
def start_ui(serving):
    """Start `serve --ui` for a model dir; returns its URL."""
    from llmkit.config import ServeConfig

    def start(model_dir, api_key: str | None = None, task: str | None = None) -> str:
        return serving(ServeConfig(model=str(model_dir), ui=True, max_new_tokens=NEW_TOKENS, task=task), api_key)

    return start


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    # an explicit driver and binary: Selenium Manager (which would download them) is never asked
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_the_demo_chat_shows_the_greedy_reply_of_the_api(start_ui, browser, model_dir, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    message = "The for statement"
    expected = _greedy_reply(model_dir, [{"role": "user", "content": message}])
    ui_server = start_ui(model_dir)
    assert len(expected.strip()) > 5
    api_answer = httpx.post(f"{ui_server}/v1/chat/completions", timeout=60, json={
        "model": str(model_dir), "messages": [{"role": "user", "content": message}]}).json()
    assert api_answer["choices"][0]["message"]["content"] == expected

    browser.get(f"{ui_server}/")   # / leads to the demo
    wait = WebDriverWait(browser, 20)
    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "textarea"))
    assert browser.current_url.rstrip("/").endswith("/ui")
    box.send_keys(message)
    box.send_keys(Keys.ENTER)

    def shown() -> str:
        replies = browser.find_elements(By.CSS_SELECTOR, ".message.bot")
        return replies[-1].text if replies else ""

    _wait_for_text(browser, shown, expected, tmp_path / "serve-ui-chat.png")
    _assert_nothing_fetched_elsewhere(browser, ui_server)


def test_a_base_model_gets_a_completion_box_with_the_greedy_completion(start_ui, browser, base_model_dir, tmp_path):
    from selenium.webdriver.common.by import By

    prompt = "A class definition"
    expected = _greedy_reply(base_model_dir, prompt=prompt)
    assert len(expected.strip()) > 5
    ui_server = start_ui(base_model_dir)

    _type_and_press(browser, f"{ui_server}/ui/", prompt, "Complete")
    completion_box = browser.find_elements(By.CSS_SELECTOR, "textarea")[1]
    _wait_for_text(browser, lambda: completion_box.get_attribute("value"), expected,
                   tmp_path / "serve-ui-completion.png")


def test_with_an_api_key_the_demo_wants_it_as_its_password(start_ui, model_dir):
    import httpx

    ui_server = start_ui(model_dir, api_key="sk-demo")
    assert httpx.get(f"{ui_server}/ui/config", timeout=10).status_code == 401
    with httpx.Client(base_url=ui_server, timeout=10) as client:
        assert client.post("/ui/login", data={"username": "me", "password": "sk-wrong"}).status_code == 400
        assert client.post("/ui/login", data={"username": "me", "password": "sk-demo"}).status_code == 200
        assert client.get("/ui/config").status_code == 200


def test_serve_ui_without_gradio_is_a_config_error_with_the_install_hint(cli, model_dir, monkeypatch):
    from helpers import assert_clean_error

    monkeypatch.setitem(sys.modules, "gradio", None)   # `import gradio` raises ImportError
    # a host no server can bind: were the UI not built, serve would fail (exit 1) rather than run on
    assert_clean_error(cli("serve", "-m", model_dir, "--ui", "--host", "256.0.0.1"), 2, "gradio",
                       "pip install 'llmkit[serve]'")


def _type_and_press(browser, url: str, text: str, button: str) -> None:
    """Open `url`, type `text` into the page's first text box and press the button labelled `button`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    box = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, "textarea"))
    box.send_keys(text)
    browser.find_element(By.XPATH, f"//button[normalize-space()='{button}']").click()


def _wait_for_text(browser, shown, expected: str, screenshot: Path) -> None:
    """Wait until the page shows `expected` (word for word: the page lays the text out), then take a screenshot,
    whether it came or not."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def words(text: str) -> list[str]:
        return (text or "").split()

    try:
        WebDriverWait(browser, 20).until(lambda d: words(shown()) == words(expected))
    except TimeoutException:
        pass
    finally:
        _screenshot(browser, screenshot)
    assert words(shown()) == words(expected), browser.page_source[-4000:]


def _screenshot(browser, path: Path) -> None:
    """The page as it is now, at `path` and in $LLMKIT_SCREENSHOT_DIR when it is set."""
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 0
    if os.environ.get("LLMKIT_SCREENSHOT_DIR"):
        target = Path(os.environ["LLMKIT_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def _assert_nothing_fetched_elsewhere(browser, server: str) -> None:
    """The page fetched nothing but from this server: no fonts, analytics or scripts from the network."""
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(url.startswith(server) for url in fetched), fetched


def test_a_classifier_gets_a_box_that_shows_its_labels_and_scores(start_ui, browser, bert_cls_dir, tmp_path):
    import torch
    from selenium.webdriver.common.by import By
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    text = "A class definition is an executable statement"
    model = AutoModelForSequenceClassification.from_pretrained(bert_cls_dir).eval()
    with torch.no_grad():
        logits = model(**AutoTokenizer.from_pretrained(bert_cls_dir)(text, return_tensors="pt")).logits[0]
    probs = torch.softmax(logits.double(), -1).tolist()
    best = model.config.id2label[max(range(len(probs)), key=probs.__getitem__)]
    # Gradio's Label shows each score as Math.round(100 * score) percent
    percents = {model.config.id2label[i]: f"{int(100 * p + 0.5)}%" for i, p in enumerate(probs)}
    ui_server = start_ui(bert_cls_dir)

    _type_and_press(browser, f"{ui_server}/ui/", text, "Classify")

    def shown() -> str:
        found = browser.find_elements(By.CSS_SELECTOR, '[data-testid="label-output-value"]')
        rows = [browser.find_elements(By.CSS_SELECTOR, f'[data-testid="{label}-confidence-set"]')
                for label in percents]
        if not found or not all(rows):
            return ""
        return " ".join([found[0].text, *(row[0].text for row in rows)])

    _wait_for_text(browser, shown, " ".join([best, *(f"{label} {p}" for label, p in percents.items())]),
                   tmp_path / "serve-ui-classify.png")


def test_an_embedding_model_gets_a_box_that_shows_its_vector(start_ui, browser, bert_dir, tmp_path):
    import json

    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from transformers import AutoModel, AutoTokenizer

    text = "Lists"
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(bert_dir).eval()(
            **AutoTokenizer.from_pretrained(bert_dir)(text, return_tensors="pt")).last_hidden_state[0]
    expected = hidden.mean(0).tolist()   # one text: no padding to mask
    ui_server = start_ui(bert_dir, task="feature-extraction")

    _type_and_press(browser, f"{ui_server}/ui/", text, "Embed")

    def shown() -> dict:
        """The JSON view's document (its text: the block's label, then the JSON laid out one token a line)."""
        views = browser.find_elements(By.CSS_SELECTOR, '[data-testid="json"]')
        text = "".join(views[0].text.split()) if views else ""
        try:
            return json.loads(text[text.find("{"):])
        except ValueError:
            return {}

    WebDriverWait(browser, 20).until(lambda d: shown().get("dimensions"))
    _screenshot(browser, tmp_path / "serve-ui-embed.png")
    assert shown()["dimensions"] == len(expected)
    assert shown()["embedding"] == pytest.approx(expected, abs=1e-5)
