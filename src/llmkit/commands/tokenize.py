"""`llmkit tokenize`: inspect tokenizers, train new ones, pre-tokenize and pack datasets."""

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.config import TokenizeDatasetConfig, TokenizeShowConfig, TokenizeTrainConfig, TokenizeVocabConfig

app = typer.Typer(help="Inspect tokenizers, train new ones, pre-tokenize and pack datasets.", no_args_is_help=True,
                  add_completion=False)


@app.command("show", epilog=examples(
    'llmkit tokenize show -t runs/quickstart/tokenizer "The for statement iterates."',
    'llmkit tokenize show -t ./bert-tok "How old are you?" --pair "I am six." --max-length 12 --padding max_length',
    'llmkit tokenize show -t ./bert-tok "Hello world" --slow --json'))
@config_command(TokenizeShowConfig)
def show_cmd(cfg: TokenizeShowConfig, out: Output) -> None:
    """Tokens, ids, offsets, word ids, masks and the decoded text of each TEXT."""
    from llmkit.tokenization import show

    result = show(cfg)
    out.result({"tokenizer": result.tokenizer, "tokenizer_class": result.tokenizer_class,
                "is_fast": result.is_fast, "texts": [_encoded_json(e) for e in result.encodings]},
               lambda _: _render_show(result))


def _render_show(result) -> None:
    from rich.table import Table

    out = console()
    kind = "fast (Rust)" if result.is_fast else "slow (Python)"
    out.print(f"[bold]{result.tokenizer}[/bold]  {result.tokenizer_class}, {kind}")
    for enc in result.encodings:
        title = repr(enc.text) + (f" + {enc.pair!r}" if enc.pair is not None else "")
        table = Table(title=title, title_justify="left")
        for column in ("#", "token", "id", "offsets", "word", "special", "mask"):
            table.add_column(column, justify="right" if column not in ("token",) else "left")
        if enc.token_type_ids is not None:
            table.add_column("type", justify="right")
        for i, token in enumerate(enc.tokens):
            offsets = f"{enc.offsets[i][0]}-{enc.offsets[i][1]}" if enc.offsets else "-"
            word = "-" if enc.word_ids is None or enc.word_ids[i] is None else str(enc.word_ids[i])
            row = [str(i), repr(token)[1:-1], str(enc.input_ids[i]), offsets, word,
                   "yes" if enc.special_tokens_mask[i] else "", str(enc.attention_mask[i])]
            if enc.token_type_ids is not None:
                row.append(str(enc.token_type_ids[i]))
            table.add_row(*row, style="dim" if enc.special_tokens_mask[i] else None)
        out.print(table)
        out.print(f"{len(enc.tokens)} tokens; decoded: {enc.decoded!r}", markup=False)


def _encoded_json(enc) -> dict:
    document = {"text": enc.text, "pair": enc.pair, "tokens": enc.tokens, "input_ids": enc.input_ids,
                "attention_mask": enc.attention_mask, "offsets": enc.offsets, "word_ids": enc.word_ids,
                "special_tokens_mask": enc.special_tokens_mask, "sequence_ids": enc.sequence_ids,
                "decoded": enc.decoded}
    if enc.token_type_ids is not None:
        document["token_type_ids"] = enc.token_type_ids
    return document


@app.command("vocab", epilog=examples(
    "llmkit tokenize vocab -t runs/quickstart/tokenizer",
    "llmkit tokenize vocab -t runs/quickstart/tokenizer --search ing --ids 0,1,2 --tokens '<s>,</s>'",
    "llmkit tokenize vocab -t ./bert-tok --json"))
@config_command(TokenizeVocabConfig)
def vocab_cmd(cfg: TokenizeVocabConfig, out: Output) -> None:
    """Vocabulary size, special tokens, and id <-> token lookups."""
    from llmkit.tokenization import vocab

    out.result(vocab(cfg), lambda result: _render_vocab(result, cfg.search))


def _render_vocab(result, search: str | None) -> None:
    from rich.table import Table

    out = console()
    out.print(f"[bold]{result.tokenizer}[/bold]: {result.vocab_size:,} tokens "
              f"({result.base_vocab_size:,} base + {result.vocab_size - result.base_vocab_size:,} added)")
    table = Table(title="special tokens", title_justify="left")
    for column in ("name", "token", "id"):
        table.add_column(column)
    for name, info in result.special_tokens.items():
        table.add_row(name, info["token"], str(info["id"]))
    out.print(table)
    for title, rows, keys in (("search", result.search, ("id", "token")), ("ids", result.ids, ("id", "token")),
                              ("tokens", result.tokens, ("token", "id"))):
        if rows:
            t = Table(title=title, title_justify="left")
            for key in keys:
                t.add_column(key)
            for row in rows:
                t.add_row(*(repr(row[k])[1:-1] if k == "token" else str(row[k]) for k in keys))
            out.print(t)
    if result.search == []:
        out.print(f"no token contains {search!r}")


@app.command("train", epilog=examples(
    "llmkit tokenize train --corpus corpus.txt --type bpe --vocab-size 8000 -o my-tokenizer",
    "llmkit tokenize train --corpus a.jsonl --corpus b.jsonl --text-field body --type wordpiece --vocab-size 30522 "
    "--lowercase -o bert-tok",
    "llmkit tokenize train --preset bpe-4k --corpus corpus.txt -o tok --json"))
@config_command(TokenizeTrainConfig)
def train_cmd(cfg: TokenizeTrainConfig, out: Output) -> None:
    """Train a tokenizer with the `tokenizers` library; the output dir loads with AutoTokenizer.from_pretrained."""
    from llmkit.tokenization import train_tokenizer

    out.result(train_tokenizer(cfg, reporter=out.report), _render_trained)


def _render_trained(result) -> None:
    out = console()
    out.print(f"[green]Trained[/green] a {result.type} tokenizer with {result.vocab_size:,} tokens on "
              f"{result.documents:,} documents ({result.characters:,} characters) in {result.seconds:.1f} s")
    out.print(f"tokens per word: {result.tokens_per_word:.3f}")
    out.print(f"sample: {result.sample_text!r}", markup=False)
    out.print("      → " + " | ".join(result.sample_tokens), markup=False)
    out.print(f"saved to {result.output_dir}")


@app.command("dataset", epilog=examples(
    "llmkit tokenize dataset -t runs/quickstart/tokenizer --data corpus.jsonl -o data/tok --max-length 512",
    "llmkit tokenize dataset -t runs/quickstart/tokenizer --data corpus.jsonl -o data/packed --pack --max-length 1024",
    "llmkit tokenize dataset -t ./tok --data notes.txt -o data/notes --json"))
@config_command(TokenizeDatasetConfig)
def dataset_cmd(cfg: TokenizeDatasetConfig, out: Output) -> None:
    """Pre-tokenize a dataset into a `datasets` Arrow dir that the training commands accept."""
    if cfg.output_dir is None:
        from llmkit.errors import ConfigError

        raise ConfigError("--output-dir is required", hint="use `llmkit tokenize stats` for statistics without output")
    _run_dataset(cfg, out)


@app.command("stats", epilog=examples(
    "llmkit tokenize stats -t runs/quickstart/tokenizer --data corpus.jsonl",
    "llmkit tokenize stats -t runs/quickstart/tokenizer --data corpus.jsonl --max-length 256 --json",
    "llmkit tokenize stats -t ./tok --data corpus.jsonl --pack --max-length 1024",
    "llmkit tokenize stats -t ./chat-model --data chats.jsonl,notes.jsonl.gz --json"))
@config_command(TokenizeDatasetConfig, skip=("output_dir", "overwrite"))
def stats_cmd(cfg: TokenizeDatasetConfig, out: Output) -> None:
    """Each source's detected format and first example as training sees it, and token-length statistics, without
    writing anything."""
    from llmkit.tokenization import tokenize_stats

    _report(tokenize_stats(cfg, reporter=out.report), out)


def _run_dataset(cfg: TokenizeDatasetConfig, out: Output) -> None:
    from llmkit.tokenization import tokenize_dataset

    _report(tokenize_dataset(cfg, reporter=out.report), out)


def _report(result, out: Output) -> None:
    for warning in result.warnings:
        out.report.warn(warning)
    out.result(result, _render_dataset)


PREVIEW_CHARS = 1200   # of a long document, the start is enough to see its shape (--json has all of it)


def _render_sources(sources) -> None:
    from rich.text import Text

    out = console()
    for preview in sources:
        template = f", rendered with the {preview.template} chat template" if preview.template else ""
        out.print(Text.assemble((preview.source, "bold"), f": {preview.format_name} ({preview.records:,} records; "
                                f"columns {', '.join(preview.columns)}){template}"))
        example, shown = Text(), 0
        for piece in preview.example:   # the loss is taken on the highlighted pieces
            text = piece["text"][:max(PREVIEW_CHARS - shown, 0)]
            example.append(text, style="bold green" if piece["trained"] else "dim")
            shown += len(text)
        hidden = sum(len(p["text"]) for p in preview.example) - shown
        if hidden:
            example.append(f" … ({hidden:,} more characters)", style="italic")
        out.print(example)
        out.print(f"first example: {preview.example_tokens:,} tokens, {preview.example_trained_tokens:,} trained "
                  "(highlighted)", highlight=False)


def _render_dataset(result) -> None:
    from rich.table import Table

    _render_sources(result.sources)
    s = result.stats
    table = Table(title=f"token lengths of {result.data}", title_justify="left")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    rows = [("documents", f"{s.documents:,}"), ("tokens", f"{s.tokens:,}"), ("mean", f"{s.mean:.1f}"),
            ("p50", str(s.p50)), ("p90", str(s.p90)), ("p99", str(s.p99)), ("max", str(s.max))]
    if result.max_length is not None and not result.packed:
        rows.append(("share truncated", f"{s.truncated_share:.2%}"))
    if s.packing_efficiency is not None:
        rows += [("blocks", f"{s.blocks:,} × {result.max_length}"), ("packing efficiency", f"{s.packing_efficiency:.2%}")]
    if s.padding_efficiency is not None:
        rows.append(("padding efficiency", f"{s.padding_efficiency:.2%}"))
    rows.append(("tokens/s", f"{result.tokens_per_second:,.0f}"))
    for name, value in rows:
        table.add_row(name, value)
    out = console()
    out.print(table)
    if result.output_dir is not None:
        out.print(f"wrote {result.rows:,} rows to {result.output_dir}")
