"""`llmkit serve`: a model behind an OpenAI-compatible HTTP API (uvicorn runs llmkit.serve's app)."""

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, examples
from llmkit.config import ServeConfig

# seconds a SIGINT/SIGTERM waits for the requests in flight before their connections are closed
GRACEFUL_SHUTDOWN_S = 10


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=examples(
        "llmkit serve -m runs/sft/model --port 8000",
        "llmkit serve -m runs/sft/model --ui   (and a web demo at http://127.0.0.1:8000/ui)",
        "llmkit serve -m ./base --adapter runs/peft/adapter --load-in-4bit --host 0.0.0.0   (with $LLMKIT_API_KEY "
        "set, clients must send it)",
        "curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' "
        "-d '{\"model\": \"runs/sft/model\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'",
    ))(serve)


@config_command(ServeConfig)
def serve(cfg: ServeConfig, out: Output) -> None:
    """Serve a generation model over an OpenAI-compatible HTTP API: /v1/chat/completions and /v1/completions
    (streamed with "stream": true), /v1/models and /health; waiting requests are batched; --ui adds a web demo.
    A classifier is served at /v1/classify, an embedding model (--task feature-extraction) at /v1/embeddings.
    Ctrl-C or SIGTERM stops it (exit code 0)."""
    import os

    from llmkit.errors import ConfigError, LlmkitError

    try:
        import fastapi  # noqa: F401 - the app's framework, imported by llmkit.serve
        import uvicorn
    except ImportError as exc:
        raise ConfigError(f"llmkit serve needs {exc.name}, which is not installed",
                          hint="pip install 'llmkit[serve]'") from None
    from llmkit.serve import create_app, load_served_model, served_model_id

    api_key = cfg.api_key or os.environ.get("LLMKIT_API_KEY") or None
    app = create_app(load_served_model(cfg, out.report), cfg, api_key=api_key)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                                           log_config=_logs_on_stderr(uvicorn.config.LOGGING_CONFIG),
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    url = f"http://{cfg.host}:{cfg.port}/v1"
    out.report.info(f"serving {served_model_id(cfg)} at {url}" + (" (API key required)" if api_key else ""))
    if cfg.ui:
        out.report.info(f"web demo at http://{cfg.host}:{cfg.port}/ui")
    try:
        _run_until_signal(server)
    except SystemExit:   # uvicorn exits when it cannot start (it has logged why)
        if server.started:
            raise
        raise LlmkitError(f"the server could not start on {cfg.host}:{cfg.port}",
                          hint="see the lines above: another process may hold the port (pass --port)") from None
    out.result({"model": served_model_id(cfg), "url": url, "stopped": True})


def _logs_on_stderr(config: dict) -> dict:
    """uvicorn's logging with its access lines on stderr like every other log line (stdout holds the result)."""
    import copy

    config = copy.deepcopy(config)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


def _run_until_signal(server) -> None:
    """uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the handlers it found: with these in
    place a stop the user asked for is a clean end (exit code 0), not an interruption (130) or a kill (143)."""
    import signal

    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in stops}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
