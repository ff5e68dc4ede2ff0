"""`llmkit tokenize`: inspect tokenizers, train new ones, pre-tokenize and pack datasets."""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import (ConfigOpt, JsonOpt, OutputDirOpt, OverwriteOpt, PresetOpt, PrintConfigOpt,
                                      TextFieldOpt, TokenizerOpt, TrustRemoteCodeOpt)
from llmkit.commands._runtime import build_config, comma_list, console, emit_json, examples, reporter
from llmkit.config import TokenizeDatasetConfig, TokenizeShowConfig, TokenizeTrainConfig, TokenizeVocabConfig

app = typer.Typer(help="Inspect tokenizers, train new ones, pre-tokenize and pack datasets.", no_args_is_help=True)

MaxLengthOpt = Annotated[Optional[int], typer.Option("--max-length", help="Most tokens per sequence.",
                                                     show_default=False)]


@app.command("show", epilog=examples(
    'llmkit tokenize show -t runs/quickstart/tokenizer "The for statement iterates."',
    'llmkit tokenize show -t ./bert-tok "How old are you?" --pair "I am six." --max-length 12 --padding max_length',
    'llmkit tokenize show -t ./bert-tok "Hello world" --slow --json'))
def show_cmd(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Text(s) to tokenize.", show_default=False)] = None,
    tokenizer: TokenizerOpt = None,
    pair: Annotated[Optional[str], typer.Option("--pair", help="Second segment of a text pair.",
                                                show_default=False)] = None,
    max_length: MaxLengthOpt = None,
    padding: Annotated[Optional[str], typer.Option("--padding", help="longest | max_length | none.",
                                                   show_default=False)] = None,
    truncation: Annotated[Optional[bool], typer.Option("--truncation/--no-truncation",
                                                       help="Cut to --max-length (default: on when it is given).",
                                                       show_default=False)] = None,
    add_special_tokens: Annotated[Optional[bool], typer.Option(
        "--special-tokens/--no-special-tokens", help="Add the template's special tokens.", show_default=False)] = None,
    slow: Annotated[Optional[bool], typer.Option("--slow", help="Use the Python tokenizer, where one exists.",
                                                 show_default=False)] = None,
    trust_remote_code: TrustRemoteCodeOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Tokens, ids, offsets, word ids, masks and the decoded text of each TEXT."""
    cfg = build_config(TokenizeShowConfig, preset, config, dict(
        tokenizer=tokenizer, texts=texts or None, pair=pair, max_length=max_length, padding=padding,
        truncation=truncation, add_special_tokens=add_special_tokens, slow=slow,
        trust_remote_code=trust_remote_code), print_config, json_)
    from llmkit.tokenization import show

    result = show(cfg)
    if json_:
        emit_json({"tokenizer": result.tokenizer, "tokenizer_class": result.tokenizer_class,
                   "is_fast": result.is_fast, "texts": [_encoded_json(e) for e in result.encodings]})
        return
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
    out = {"text": enc.text, "pair": enc.pair, "tokens": enc.tokens, "input_ids": enc.input_ids,
           "attention_mask": enc.attention_mask, "offsets": enc.offsets, "word_ids": enc.word_ids,
           "special_tokens_mask": enc.special_tokens_mask, "sequence_ids": enc.sequence_ids, "decoded": enc.decoded}
    if enc.token_type_ids is not None:
        out["token_type_ids"] = enc.token_type_ids
    return out


@app.command("vocab", epilog=examples(
    "llmkit tokenize vocab -t runs/quickstart/tokenizer",
    "llmkit tokenize vocab -t runs/quickstart/tokenizer --search ing --ids 0,1,2 --tokens '<s>,</s>'",
    "llmkit tokenize vocab -t ./bert-tok --json"))
def vocab_cmd(
    tokenizer: TokenizerOpt = None,
    search: Annotated[Optional[str], typer.Option("--search", help="List tokens that contain this text.",
                                                  show_default=False)] = None,
    ids: Annotated[Optional[str], typer.Option("--ids", help="Comma-separated ids to look up.",
                                               show_default=False)] = None,
    tokens: Annotated[Optional[str], typer.Option("--tokens", help="Comma-separated tokens to look up.",
                                                  show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Most --search matches shown.",
                                                 show_default=False)] = None,
    trust_remote_code: TrustRemoteCodeOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Vocabulary size, special tokens, and id <-> token lookups."""
    cfg = build_config(TokenizeVocabConfig, preset, config, dict(
        tokenizer=tokenizer, search=search, ids=comma_list(ids, "--ids", int), tokens=comma_list(tokens, "--tokens"),
        limit=limit,
        trust_remote_code=trust_remote_code), print_config, json_)
    from llmkit.tokenization import vocab

    result = vocab(cfg)
    if json_:
        emit_json(result)
        return
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
        out.print(f"no token contains {cfg.search!r}")


@app.command("train", epilog=examples(
    "llmkit tokenize train --corpus corpus.txt --type bpe --vocab-size 8000 -o my-tokenizer",
    "llmkit tokenize train --corpus a.jsonl --corpus b.jsonl --text-field body --type wordpiece --vocab-size 30522 "
    "--lowercase -o bert-tok",
    "llmkit tokenize train --preset bpe-4k --corpus corpus.txt -o tok --json"))
def train_cmd(
    corpus: Annotated[Optional[list[str]], typer.Option("--corpus", help="Text, jsonl, json, csv or parquet file "
                                                        "(repeat for several).", show_default=False)] = None,
    type_: Annotated[Optional[str], typer.Option("--type", help="bpe (byte-level) | wordpiece | unigram.",
                                                 show_default=False)] = None,
    vocab_size: Annotated[Optional[int], typer.Option("--vocab-size", help="Tokens, special tokens included.",
                                                      show_default=False)] = None,
    min_frequency: Annotated[Optional[int], typer.Option("--min-frequency", help="Least count of a merge.",
                                                         show_default=False)] = None,
    lowercase: Annotated[Optional[bool], typer.Option("--lowercase", help="Lowercase before training.",
                                                      show_default=False)] = None,
    text_field: TextFieldOpt = None, output_dir: OutputDirOpt = None, overwrite: OverwriteOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Train a tokenizer with the `tokenizers` library; the output dir loads with AutoTokenizer.from_pretrained."""
    cfg = build_config(TokenizeTrainConfig, preset, config, dict(
        corpus=corpus or None, type=type_, vocab_size=vocab_size, min_frequency=min_frequency, lowercase=lowercase,
        text_field=text_field, output_dir=output_dir, overwrite=overwrite), print_config, json_)
    from llmkit.tokenization import train_tokenizer

    result = train_tokenizer(cfg, reporter=reporter(json_))
    if json_:
        emit_json(result)
        return
    out = console()
    out.print(f"[green]Trained[/green] a {result.type} tokenizer with {result.vocab_size:,} tokens on "
              f"{result.documents:,} documents ({result.characters:,} characters) in {result.seconds:.1f} s")
    out.print(f"tokens per word: {result.tokens_per_word:.3f}")
    out.print(f"sample: {result.sample_text!r}", markup=False)
    out.print("      → " + " | ".join(result.sample_tokens), markup=False)
    out.print(f"saved to {result.output_dir}")


def _dataset_options(tokenizer, data, text_field, output_dir, max_length, pack, num_proc, overwrite,
                     trust_remote_code) -> dict:
    return dict(tokenizer=tokenizer, data=data, text_field=text_field, output_dir=output_dir, max_length=max_length,
                pack=pack, num_proc=num_proc, overwrite=overwrite, trust_remote_code=trust_remote_code)


DataOpt = Annotated[Optional[str], typer.Option("--data", help="jsonl, json, csv, parquet, txt, a saved dataset dir "
                                                "or a hub dataset name.", show_default=False)]
PackOpt = Annotated[Optional[bool], typer.Option("--pack", help="Concatenate documents with eos between them and cut "
                                                 "blocks of --max-length.", show_default=False)]
NumProcOpt = Annotated[Optional[int], typer.Option("--num-proc", help="Tokenizer threads (default: all cores).",
                                                   show_default=False)]


@app.command("dataset", epilog=examples(
    "llmkit tokenize dataset -t runs/quickstart/tokenizer --data corpus.jsonl -o data/tok --max-length 512",
    "llmkit tokenize dataset -t runs/quickstart/tokenizer --data corpus.jsonl -o data/packed --pack --max-length 1024",
    "llmkit tokenize dataset -t ./tok --data notes.txt -o data/notes --json"))
def dataset_cmd(
    tokenizer: TokenizerOpt = None, data: DataOpt = None, text_field: TextFieldOpt = None,
    output_dir: OutputDirOpt = None, max_length: MaxLengthOpt = None, pack: PackOpt = None,
    num_proc: NumProcOpt = None, overwrite: OverwriteOpt = None, trust_remote_code: TrustRemoteCodeOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Pre-tokenize a dataset into a `datasets` Arrow dir that the training commands accept."""
    options = _dataset_options(tokenizer, data, text_field, output_dir, max_length, pack, num_proc, overwrite,
                               trust_remote_code)
    cfg = build_config(TokenizeDatasetConfig, preset, config, options, print_config, json_)
    if cfg.output_dir is None:
        from llmkit.errors import ConfigError

        raise ConfigError("--output-dir is required", hint="use `llmkit tokenize stats` for statistics without output")
    _run_dataset(cfg, json_)


@app.command("stats", epilog=examples(
    "llmkit tokenize stats -t runs/quickstart/tokenizer --data corpus.jsonl",
    "llmkit tokenize stats -t runs/quickstart/tokenizer --data corpus.jsonl --max-length 256 --json",
    "llmkit tokenize stats -t ./tok --data corpus.jsonl --pack --max-length 1024"))
def stats_cmd(
    tokenizer: TokenizerOpt = None, data: DataOpt = None, text_field: TextFieldOpt = None,
    max_length: MaxLengthOpt = None, pack: PackOpt = None, num_proc: NumProcOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Token-length statistics of a dataset, without writing anything."""
    options = _dataset_options(tokenizer, data, text_field, None, max_length, pack, num_proc, None, trust_remote_code)
    cfg = build_config(TokenizeDatasetConfig, preset, config, options, print_config, json_)
    _run_dataset(cfg, json_)


def _run_dataset(cfg: TokenizeDatasetConfig, json_: bool) -> None:
    from llmkit.tokenization import tokenize_dataset

    report = reporter(json_)
    result = tokenize_dataset(cfg, reporter=report)
    for warning in result.warnings:
        report.warn(warning)
    if json_:
        emit_json(result)
        return
    from rich.table import Table

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
