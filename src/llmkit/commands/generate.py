"""`llmkit generate`: complete a prompt, answer a message, chat, or run a JSONL batch; fill masks with a masked LM."""

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.config import ANALYSIS_TASKS, GenerateConfig


def register(app: typer.Typer) -> None:
    app.command("generate", epilog=examples(
        'llmkit generate --model runs/quickstart/pretrain/model --prompt "The for statement" --max-new-tokens 40',
        'llmkit generate --model ./chat-model --message "Explain list comprehensions." --do-sample '
        '--temperature 0.7 --top-p 0.9 --seed 1 --json',
        'llmkit generate --model runs/qa/model --task question-answering --question "Who wrote it?" '
        '--context "$(cat doc.txt)" --json   (also text-classification, token-classification, feature-extraction)',
        "llmkit generate --model ./model --input prompts.jsonl --output answers.jsonl --batch-size 8 --stop '\\n\\n'",
    ))(generate)


@config_command(GenerateConfig)
def generate(cfg: GenerateConfig, out: Output) -> None:
    """Generate with a causal, encoder-decoder or masked LM: stream a completion, answer a chat message, chat,
    or run a JSONL batch. A prompt longer than the context keeps its last tokens (with a warning)."""
    from llmkit.inference.heads import detect_task

    cfg = detect_task(cfg)
    if cfg.task in ANALYSIS_TASKS:
        _task(cfg, out)
        return
    from llmkit.inference.generator import Generator

    generator = Generator(cfg, out.report)
    if cfg.chat:
        _chat(cfg, generator, out)
    elif cfg.input is not None:
        _batch(cfg, generator, out)
    else:
        _single(cfg, generator, out)


def _task(cfg: GenerateConfig, out: Output) -> None:
    """text-classification, token-classification, question-answering, feature-extraction."""
    from llmkit.inference.heads import run_task_batch, run_task_prompt

    report = out.report
    if cfg.input is not None:
        result = run_task_batch(cfg, report)
        if result is None:   # a rank of `llmkit launch` other than 0: RANK 0 reports the whole job
            return
        for warning in result.warnings:
            report.warn(warning)
        out.result(result, lambda result: report.info(
            f"wrote {result.written} result(s) to {result.output}"
            + (f" ({result.skipped} already there)" if result.skipped else "")
            + f" in {result.seconds:.1f} s ({result.per_second:,.1f} inputs/s)"))
        return
    output = run_task_prompt(cfg, report)
    for warning in output.warnings:
        report.warn(warning)
    out.result({"model": output.model, "task": output.task, **output.result, "seconds": output.seconds},
               lambda result: _render_task(cfg.task, result, report))


def _render_task(task: str, result: dict, report) -> None:
    """One analysis result for people: tab-separated lines on stdout, notes on stderr."""
    if task == "text-classification":
        for item in result.get("scores", [result]):
            sys.stdout.write(f"{item['label']}\t{item['score']:.4f}\n")
    elif task == "token-classification":
        for e in result["entities"]:
            sys.stdout.write(f"{e['type']}\t{e['text']}\t{e['start']}-{e['end']}\t{e['score']:.4f}\n")
        if not result["entities"]:
            report.info("no entities found")
    elif task == "question-answering":
        for a in result.get("answers", [result]):
            shown = a["answer"] if a["answer"] else "(no answer)"
            sys.stdout.write(f"{shown}\t{a['start']}-{a['end']}\t{a['score']:.4f}\n")
    else:
        sys.stdout.write(" ".join(f"{v:.6g}" for v in result["embedding"]) + "\n")
        report.info(f"{result['dimensions']} dimensions, {result['pooling']} pooling"
                    + (", normalized" if result["normalized"] else ""))
    sys.stdout.flush()


def _write(chunk: str) -> None:
    """Streamed text, as it is generated."""
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _single(cfg: GenerateConfig, generator, out: Output) -> None:
    from llmkit.inference.generator import FillMaskResult, run_prompt

    if out.json or generator.task == "fill-mask":
        result = run_prompt(cfg, generator)
    else:
        result = run_prompt(cfg, generator, on_text=_write)
        _write("\n")
    if isinstance(result, FillMaskResult):
        out.result(result, _render_fill_mask)
        return
    # people saw the text streamed: what is left for them is the other sequences and the figures
    out.result(_result_json(result), lambda _: _render_generation(result, out.report))


def _render_generation(result, report) -> None:
    if len(result.sequences) > 1:
        for i, seq in enumerate(result.sequences[1:], start=2):
            sys.stdout.write(f"--- sequence {i} ({seq.finish_reason})\n{seq.text}\n")
    t = result.timings
    parts = [f"{result.prompt_tokens} prompt + {result.completion_tokens} new tokens ({result.finish_reason})"]
    if t.time_to_first_token_s is not None:
        parts.append(f"first token {t.time_to_first_token_s * 1000:.0f} ms")
    if t.prefill_tokens_per_s is not None:
        parts.append(f"prefill {t.prefill_tokens_per_s:,.0f} tok/s")
    if t.decode_tokens_per_s is not None:
        parts.append(f"decode {t.decode_tokens_per_s:,.1f} tok/s")
    report.info(" · ".join(parts))
    report.info("params: " + "  ".join(f"{k}={v}" for k, v in result.params.items()))


def _result_json(result) -> dict:
    document = {"model": result.model, "task": result.task, "text": result.text,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "finish_reason": result.finish_reason, "timings": result.timings, "params": result.params,
                "truncated_prompt_tokens": result.truncated_prompt_tokens}
    if len(result.sequences) > 1:
        document["sequences"] = [{"text": s.text, "completion_tokens": s.completion_tokens,
                                  "finish_reason": s.finish_reason} for s in result.sequences]
    return document


def _render_fill_mask(result) -> None:
    from rich.table import Table

    out = console()
    for i, candidates in enumerate(result.masks, start=1):
        table = Table(title=f"mask {i} of {len(result.masks)}", title_justify="left")
        for column in ("token", "score", "sequence"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for c in candidates:
            table.add_row(c.token, f"{c.score:.4f}", c.sequence)
        out.print(table)


def _batch(cfg: GenerateConfig, generator, out: Output) -> None:
    from llmkit.inference.batch import run_batch

    result = run_batch(cfg, generator, out.report)
    if result is None:   # a rank of `llmkit launch` other than 0: RANK 0 reports the whole job
        return
    out.result(result, lambda result: out.report.info(
        f"wrote {result.generated} result(s) to {result.output}"
        + (f" ({result.skipped} already there)" if result.skipped else "")
        + f" in {result.seconds:.1f} s, {result.tokens_per_s:,.1f} generated tokens/s"))


def _chat(cfg: GenerateConfig, generator, out: Output) -> None:
    from llmkit.inference.chat import ChatSession

    session = ChatSession(generator, cfg.system)
    interactive = sys.stdin.isatty()
    err = sys.stderr
    if interactive:
        print(f"chatting with {generator.name} — {session.help()}", file=err)
    for line in read_turns(sys.stdin, interactive, prompt=lambda: "you> "):
        stop = threading.Event()
        with interrupt_as_event(stop):
            reply = session.handle(line, on_text=None if out.json else _write, stop_event=stop)
        if reply.kind == "exit":
            break
        if reply.kind == "answer":
            if not out.json:
                _write("\n")
                t = reply.turn.timings
                speed = f", {t.decode_tokens_per_s:,.1f} tok/s" if t.decode_tokens_per_s else ""
                note = " (stopped)" if reply.turn.finish_reason == "interrupted" else ""
                print(f"[{reply.turn.completion_tokens} tokens{speed}]{note}", file=err)
        elif reply.message:
            print(reply.message, file=err)
    # people saw the replies streamed; scripts get the whole conversation
    out.result({"model": generator.name, "params": session.params(), "messages": session.conversation(),
                "turns": session.turns})


# ------------------------------------------------------------------------------------ the terminal REPL's parts

@contextlib.contextmanager
def interrupt_as_event(event: threading.Event):
    """While generating in chat: Ctrl-C sets `event` (the answer stops) instead of raising KeyboardInterrupt."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def read_turns(stream, interactive: bool, prompt: Callable[[], str] | None = None) -> Iterable[str]:
    """User turns: `input()` at a terminal (Ctrl-C clears the line, Ctrl-D leaves), else one line per turn."""
    if not interactive:
        for line in stream:
            yield line.rstrip("\r\n")
        return
    while True:
        try:
            yield input(prompt() if prompt else "")
        except EOFError:
            return
        except KeyboardInterrupt:
            continue
