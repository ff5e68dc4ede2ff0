"""`llmkit generate`: complete a prompt, answer a message, chat, or run a JSONL batch; fill masks with a masked LM."""

import contextlib
import re
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit.commands._options import ConfigOpt, JsonOpt, PresetOpt, PrintConfigOpt, SeedOpt, TrustRemoteCodeOpt, option
from llmkit.commands._runtime import build_config, emit_json, examples, reporter
from llmkit.config import ANALYSIS_TASKS, GenerateConfig

HELP_PANEL_INPUT = "What to generate from"
HELP_PANEL_DECODING = "Decoding (default: the model's generation_config)"
HELP_PANEL_MODEL = "Model loading"
HELP_PANEL_TASKS = "Classification, NER, extractive QA, embeddings"


def _opt(*names: str, help: str, panel: str = HELP_PANEL_DECODING):
    return option(*names, help=help, panel=panel)


def register(app: typer.Typer) -> None:
    app.command("generate", epilog=examples(
        'llmkit generate --model runs/quickstart/pretrain/model --prompt "The for statement" --max-new-tokens 40',
        'llmkit generate --model ./chat-model --message "Explain list comprehensions." --do-sample '
        '--temperature 0.7 --top-p 0.9 --seed 1 --json',
        'llmkit generate --model runs/qa/model --task question-answering --question "Who wrote it?" '
        '--context "$(cat doc.txt)" --json   (also text-classification, token-classification, feature-extraction)',
        "llmkit generate --model ./model --input prompts.jsonl --output answers.jsonl --batch-size 8 --stop '\\n\\n'",
    ))(generate)


def generate(
    model: Annotated[Optional[str], _opt("--model", "-m", help="Model dir or hub id.", panel=HELP_PANEL_MODEL)] = None,
    adapter: Annotated[Optional[str], _opt("--adapter", help="PEFT adapter dir trained on --model (whose base it "
                                           "must name).", panel=HELP_PANEL_MODEL)] = None,
    task: Annotated[Optional[str], _opt("--task", help="text-generation | summarization | translation | fill-mask "
                                        "| text-classification | token-classification | question-answering | "
                                        "feature-extraction (default: from the architecture and its head).",
                                        panel=HELP_PANEL_MODEL)] = None,
    prompt: Annotated[Optional[str], _opt("--prompt", "-p", help="Text sent as it is (completion); with fill-mask, "
                                          "text with mask tokens.", panel=HELP_PANEL_INPUT)] = None,
    message: Annotated[Optional[str], _opt("--message", help="One user turn, rendered with the chat template.",
                                           panel=HELP_PANEL_INPUT)] = None,
    system: Annotated[Optional[str], _opt("--system", help="System message for --message, --chat and `messages` "
                                          "lines.", panel=HELP_PANEL_INPUT)] = None,
    chat_template: Annotated[Optional[Path], _opt("--chat-template", help="Jinja chat template file (default: the "
                                                  "tokenizer's own, e.g. saved with a run).",
                                                  panel=HELP_PANEL_INPUT)] = None,
    input_: Annotated[Optional[Path], _opt("--input", help="Batch: JSONL with a `prompt` or a `messages` list per "
                                           "line.", panel=HELP_PANEL_INPUT)] = None,
    output: Annotated[Optional[Path], _opt("--output", help="Batch: JSONL results in input order; lines already "
                                           "there are skipped (resume).", panel=HELP_PANEL_INPUT)] = None,
    chat: Annotated[Optional[bool], _opt("--chat", help="Interactive chat (/help lists its commands); reads one turn "
                                         "per line when stdin is not a terminal.", panel=HELP_PANEL_INPUT)] = None,
    overwrite: Annotated[Optional[bool], _opt("--overwrite", help="Batch: replace an --output that llmkit did not "
                                              "write, or wrote with other settings (else it is refused).",
                                              panel=HELP_PANEL_INPUT)] = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", help="Prompts per forward pass in batch mode.",
                                              panel=HELP_PANEL_INPUT)] = None,
    max_new_tokens: Annotated[Optional[int], _opt("--max-new-tokens", help="Most tokens generated (default: the "
                                                  "model's, else 128).")] = None,
    min_new_tokens: Annotated[Optional[int], _opt("--min-new-tokens", help="Fewest tokens generated (eos held "
                                                  "back until then).")] = None,
    max_length: Annotated[Optional[int], _opt("--max-length", help="Most tokens, prompt included.")] = None,
    min_length: Annotated[Optional[int], _opt("--min-length", help="Fewest tokens, prompt included.")] = None,
    do_sample: Annotated[Optional[bool], _opt("--do-sample/--greedy", help="Sample, or take the most likely token.")
                         ] = None,
    num_beams: Annotated[Optional[int], _opt("--num-beams", help="Beam search with this many beams.")] = None,
    num_return_sequences: Annotated[Optional[int], _opt("--num-return-sequences", help="Sequences per prompt "
                                                        "(sampling, or ≤ --num-beams).")] = None,
    length_penalty: Annotated[Optional[float], _opt("--length-penalty", help="Beam search: > 1 favours longer "
                                                    "outputs.")] = None,
    early_stopping: Annotated[Optional[bool], _opt("--early-stopping/--no-early-stopping", help="Beam search: stop "
                                                   "when num_beams candidates are done.")] = None,
    no_repeat_ngram_size: Annotated[Optional[int], _opt("--no-repeat-ngram-size", help="No n-gram of this size "
                                                        "occurs twice.")] = None,
    temperature: Annotated[Optional[float], _opt("--temperature", help="Sampling: > 0; below 1 sharpens, above "
                                                 "flattens.")] = None,
    top_k: Annotated[Optional[int], _opt("--top-k", help="Sampling: keep the k most likely tokens (0: off); "
                                         "fill-mask: candidates shown (default 5); text-classification, "
                                         "question-answering: the k best labels/answers.")] = None,
    top_p: Annotated[Optional[float], _opt("--top-p", help="Sampling: nucleus mass in (0, 1].")] = None,
    min_p: Annotated[Optional[float], _opt("--min-p", help="Sampling: drop tokens below min-p × the top "
                                           "probability.")] = None,
    typical_p: Annotated[Optional[float], _opt("--typical-p", help="Sampling: locally typical mass in (0, 1].")
                         ] = None,
    repetition_penalty: Annotated[Optional[float], _opt("--repetition-penalty", help="> 1 discourages tokens "
                                                        "already present.")] = None,
    seed: SeedOpt = None,
    stop: Annotated[Optional[list[str]], _opt("--stop", help="Stop sequence (repeatable; \\n and \\t are "
                                              "escapes); the output ends before it.")] = None,
    dtype: Annotated[Optional[str], _opt("--dtype", help="auto | fp32 | fp16 | bf16 (auto: the checkpoint's).",
                                         panel=HELP_PANEL_MODEL)] = None,
    device: Annotated[Optional[str], _opt("--device", help="auto | cpu | cuda.", panel=HELP_PANEL_MODEL)] = None,
    load_in_8bit: Annotated[Optional[bool], _opt("--load-in-8bit", help="bitsandbytes int8 weights.",
                                                 panel=HELP_PANEL_MODEL)] = None,
    load_in_4bit: Annotated[Optional[bool], _opt("--load-in-4bit", help="bitsandbytes NF4 weights.",
                                                 panel=HELP_PANEL_MODEL)] = None,
    trust_remote_code: TrustRemoteCodeOpt = None,
    text_pair: Annotated[Optional[str], _opt("--text-pair", help="text-classification: the second text of a pair "
                                             "(NLI); batch lines: `text_pair`.", panel=HELP_PANEL_TASKS)] = None,
    question: Annotated[Optional[str], _opt("--question", help="question-answering: the question.",
                                            panel=HELP_PANEL_TASKS)] = None,
    context: Annotated[Optional[str], _opt("--context", help="question-answering: the text the answer is a span of.",
                                           panel=HELP_PANEL_TASKS)] = None,
    doc_stride: Annotated[Optional[int], _opt("--doc-stride", help="question-answering: tokens shared by a long "
                                              "context's windows (default 128; windows are --max-length tokens, "
                                              "default 384).", panel=HELP_PANEL_TASKS)] = None,
    max_answer_length: Annotated[Optional[int], _opt("--max-answer-length", help="question-answering: longest "
                                                     "answer in tokens (default 15).", panel=HELP_PANEL_TASKS)] = None,
    allow_no_answer: Annotated[Optional[bool], _opt("--allow-no-answer", help="question-answering: the empty answer "
                                                    "competes (models trained with unanswerable questions).",
                                                    panel=HELP_PANEL_TASKS)] = None,
    aggregation: Annotated[Optional[str], _opt("--aggregation", help="token-classification: simple (adjacent tokens) "
                                               "| first (a word takes its first sub-token's label).",
                                               panel=HELP_PANEL_TASKS)] = None,
    pooling: Annotated[Optional[str], _opt("--pooling", help="feature-extraction: mean (over the attention mask, "
                                           "default) | cls (the first token).", panel=HELP_PANEL_TASKS)] = None,
    normalize: Annotated[Optional[bool], _opt("--normalize", help="feature-extraction: unit-length vectors.",
                                              panel=HELP_PANEL_TASKS)] = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Generate with a causal, encoder-decoder or masked LM: stream a completion, answer a chat message, chat,
    or run a JSONL batch. A prompt longer than the context keeps its last tokens (with a warning)."""
    cfg = build_config(GenerateConfig, preset, config, dict(
        model=model, adapter=adapter, task=task, prompt=prompt, message=message, system=system,
        chat_template=chat_template, input=input_, output=output, overwrite=overwrite, chat=chat,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, max_length=max_length, min_length=min_length,
        do_sample=do_sample, num_beams=num_beams, num_return_sequences=num_return_sequences,
        length_penalty=length_penalty, early_stopping=early_stopping, no_repeat_ngram_size=no_repeat_ngram_size,
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
        repetition_penalty=repetition_penalty, seed=seed, stop=[_unescape(s) for s in stop] if stop else None,
        dtype=dtype, device=device,
        load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code,
        text_pair=text_pair, question=question, context=context, doc_stride=doc_stride,
        max_answer_length=max_answer_length, allow_no_answer=allow_no_answer, aggregation=aggregation,
        pooling=pooling, normalize=normalize),
        print_config, json_)
    report = reporter(json_)
    from llmkit.inference.heads import detect_task

    cfg = detect_task(cfg)
    if cfg.task in ANALYSIS_TASKS:
        _task(cfg, report, json_)
        return
    from llmkit.inference.generator import Generator

    generator = Generator(cfg, report)
    if cfg.chat:
        _chat(cfg, generator, json_)
    elif cfg.input is not None:
        _batch(cfg, generator, report, json_)
    else:
        _single(cfg, generator, report, json_)


def _task(cfg: GenerateConfig, report, json_: bool) -> None:
    """text-classification, token-classification, question-answering, feature-extraction."""
    from llmkit.inference.heads import run_task_batch, run_task_prompt

    if cfg.input is not None:
        result = run_task_batch(cfg, report)
        for warning in result.warnings:
            report.warn(warning)
        if json_:
            emit_json(result)
        else:
            report.info(f"wrote {result.written} result(s) to {result.output}"
                        + (f" ({result.skipped} already there)" if result.skipped else "")
                        + f" in {result.seconds:.1f} s ({result.per_second:,.1f} inputs/s)")
        return
    output = run_task_prompt(cfg, report)
    for warning in output.warnings:
        report.warn(warning)
    if json_:
        emit_json({"model": output.model, "task": output.task, **output.result, "seconds": output.seconds})
        return
    result = output.result
    if cfg.task == "text-classification":
        for item in result.get("scores", [result]):
            sys.stdout.write(f"{item['label']}\t{item['score']:.4f}\n")
    elif cfg.task == "token-classification":
        for e in result["entities"]:
            sys.stdout.write(f"{e['type']}\t{e['text']}\t{e['start']}-{e['end']}\t{e['score']:.4f}\n")
        if not result["entities"]:
            report.info("no entities found")
    elif cfg.task == "question-answering":
        for a in result.get("answers", [result]):
            shown = a["answer"] if a["answer"] else "(no answer)"
            sys.stdout.write(f"{shown}\t{a['start']}-{a['end']}\t{a['score']:.4f}\n")
    else:
        sys.stdout.write(" ".join(f"{v:.6g}" for v in result["embedding"]) + "\n")
        report.info(f"{result['dimensions']} dimensions, {result['pooling']} pooling"
                    + (", normalized" if result["normalized"] else ""))
    sys.stdout.flush()


def _unescape(text: str) -> str:
    """`--stop '\\n\\n'` means two newlines: \\n, \\t and \\\\ are read as escapes (shells pass them literally)."""
    return re.sub(r"\\\\|\\n|\\t", lambda m: {"\\\\": "\\", "\\n": "\n", "\\t": "\t"}[m.group(0)], text)


def _single(cfg: GenerateConfig, generator, report, json_: bool) -> None:
    from llmkit.inference.generator import FillMaskResult, run_prompt

    if json_ or generator.task == "fill-mask":
        result = run_prompt(cfg, generator)
    else:
        def write(chunk: str) -> None:
            sys.stdout.write(chunk)
            sys.stdout.flush()

        result = run_prompt(cfg, generator, on_text=write)
        sys.stdout.write("\n")
        sys.stdout.flush()
    if isinstance(result, FillMaskResult):
        _render_fill_mask(result, json_)
        return
    if json_:
        emit_json(_result_json(result))
        return
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
    out = {"model": result.model, "task": result.task, "text": result.text, "prompt_tokens": result.prompt_tokens,
           "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason,
           "timings": result.timings, "params": result.params,
           "truncated_prompt_tokens": result.truncated_prompt_tokens}
    if len(result.sequences) > 1:
        out["sequences"] = [{"text": s.text, "completion_tokens": s.completion_tokens,
                             "finish_reason": s.finish_reason} for s in result.sequences]
    return out


def _render_fill_mask(result, json_: bool) -> None:
    if json_:
        emit_json({"model": result.model, "task": result.task, "prompt": result.prompt, "masks": result.masks,
                   "timings": result.timings})
        return
    from rich.table import Table

    from llmkit.commands._runtime import console

    out = console()
    for i, candidates in enumerate(result.masks, start=1):
        table = Table(title=f"mask {i} of {len(result.masks)}", title_justify="left")
        for column in ("token", "score", "sequence"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for c in candidates:
            table.add_row(c.token, f"{c.score:.4f}", c.sequence)
        out.print(table)


def _batch(cfg: GenerateConfig, generator, report, json_: bool) -> None:
    from llmkit.inference.batch import run_batch

    result = run_batch(cfg, generator, report)
    if json_:
        emit_json(result)
        return
    report.info(f"wrote {result.generated} result(s) to {result.output}"
                + (f" ({result.skipped} already there)" if result.skipped else "")
                + f" in {result.seconds:.1f} s, {result.tokens_per_s:,.1f} generated tokens/s")


def _chat(cfg: GenerateConfig, generator, json_: bool) -> None:
    from llmkit.inference.chat import ChatSession

    session = ChatSession(generator, cfg.system)
    interactive = sys.stdin.isatty()
    err = sys.stderr
    if interactive:
        print(f"chatting with {generator.name} — {session.help()}", file=err)

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    for line in read_turns(sys.stdin, interactive, prompt=lambda: "you> "):
        stop = threading.Event()
        with interrupt_as_event(stop):
            reply = session.handle(line, on_text=None if json_ else write, stop_event=stop)
        if reply.kind == "exit":
            break
        if reply.kind == "answer":
            if not json_:
                sys.stdout.write("\n")
                sys.stdout.flush()
                t = reply.turn.timings
                speed = f", {t.decode_tokens_per_s:,.1f} tok/s" if t.decode_tokens_per_s else ""
                note = " (stopped)" if reply.turn.finish_reason == "interrupted" else ""
                print(f"[{reply.turn.completion_tokens} tokens{speed}]{note}", file=err)
        elif reply.message:
            print(reply.message, file=err)
    if json_:
        emit_json({"model": generator.name, "params": session.params(), "messages": session.conversation(),
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
