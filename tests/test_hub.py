"""Reaching the hub: the probe goes where a real connection would (the proxy), and what the cache holds is never
refused for being offline."""

import socket
import threading

import pytest

from llmkit import hub
from llmkit.errors import ModelLoadError

UNREACHABLE = "https://hub.invalid"   # .invalid never resolves (RFC 2606)


@pytest.fixture
def listening_port():
    """A local TCP port that accepts connections, as a proxy would."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    return monkeypatch


def test_unreachable_endpoint_is_named(clean_env):
    reason = hub.hub_offline_reason()
    assert reason is not None and reason.startswith("hub.invalid is unreachable")


def test_a_proxy_that_answers_makes_the_hub_reachable(clean_env, listening_port):
    clean_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening_port}")
    assert hub.hub_offline_reason() is None


def test_no_proxy_exempts_the_hub_from_the_proxy(clean_env, listening_port):
    clean_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening_port}")
    clean_env.setenv("NO_PROXY", "hub.invalid")
    assert hub.hub_offline_reason().startswith("hub.invalid is unreachable")


def test_a_dead_proxy_is_named(clean_env):
    with socket.socket() as probe:   # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clean_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    assert hub.hub_offline_reason().startswith(f"the proxy 127.0.0.1:{port} is unreachable")


def test_cached_hub_dataset_is_not_refused_offline(clean_env, tmp_path):
    """Offline, a hub dataset with a snapshot in the HF cache goes to `datasets` (which loads cached data without
    the hub); one that is not cached is refused at once, naming the reason."""
    from huggingface_hub import constants

    from llmkit.data.loading import load_table
    from llmkit.errors import DataError

    clean_env.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Hub cannot be reached: HF_HUB_OFFLINE is set"):
        load_table("org/corpus")
    (tmp_path / "datasets--org--corpus" / "snapshots" / "0123abc").mkdir(parents=True)
    assert hub.in_hub_cache("org/corpus", "dataset") and not hub.in_hub_cache("org/corpus", "model")
    with pytest.raises(DataError, match="cannot load hub dataset 'org/corpus'"):   # datasets' turn: empty snapshot
        load_table("org/corpus")
