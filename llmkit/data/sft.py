"""SFT data: records -> conversations -> token ids with labels that train exactly the assistant replies.

Formats (detected from the columns, or set with --format): alpaca (instruction / input / output, optional system
and history), messages / sharegpt (a list of {role, content} or {from, value}), prompt / completion pairs.

Masks come from rendering the conversation prefix by prefix with the chat template: the tokens a reply adds to
the rendered text (after the generation prompt of the turns before it) are its trained tokens, end-of-turn / eos
token included. This works for any template, without `{% generation %}` tags, as long as each rendered prefix is a
prefix of the whole rendering (checked; a template that is not gets a clear error). The whole text is tokenized
once, without added special tokens (the template holds them), and tokens are assigned to replies by character
offsets; a token that straddles a reply boundary is an error too.

Longer than --seq-len: cut on the right, except with --multi-turn last, which cuts the earliest context on the
left and keeps the final reply whole (an example whose final reply alone does not fit is dropped and counted).

Labels equal input_ids where trained and -100 elsewhere; the shift happens in the model's loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from llmkit.errors import ConfigError, DataError

IGNORE = -100
FORMATS = ("alpaca", "messages", "sharegpt", "prompt-completion")
BUILTIN_TEMPLATES = ("chatml", "plain")
TEMPLATE_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>")}   # added to a tokenizer that lacks them
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "model": "assistant", "bot": "assistant"}
MESSAGE_FIELDS = ("messages", "conversations")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    row: int                              # 0-based record index in the source

    @property
    def trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class Encoded:
    examples: list[Example]
    format: str
    template_name: str
    template: str
    records: int = 0
    dropped: dict[str, int] = field(default_factory=dict)   # reason -> examples dropped
    truncated: int = 0                    # examples cut to --seq-len that kept a trained token
    end_token_id: int | None = None       # the last special token of a reply (the end of turn)
    warnings: list[str] = field(default_factory=list)

    @property
    def trained_tokens(self) -> int:
        return sum(e.trained for e in self.examples)

    @property
    def tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


# --------------------------------------------------------------------------------------------------- templates

def builtin_template(name: str) -> str:
    if name not in BUILTIN_TEMPLATES:
        raise ConfigError(f"--template {name}: no such built-in template",
                          hint=f"choose one of {', '.join(BUILTIN_TEMPLATES)}, or pass --chat-template FILE.jinja")
    return resources.files("llmkit.presets").joinpath("templates", f"{name}.jinja").read_text(encoding="utf-8")


def resolve_template(cfg, tokenizer) -> tuple[str, str]:
    """(name, Jinja text): --chat-template FILE, else --template NAME, else the tokenizer's own."""
    from pathlib import Path

    if cfg.chat_template:
        path = Path(cfg.chat_template).expanduser()
        if not path.is_file():
            raise ConfigError(f"--chat-template {path}: no such file", hint="pass a Jinja template file")
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ConfigError(f"--chat-template {path} is empty", hint="pass a Jinja template file")
        return str(path), text
    if cfg.template:
        return cfg.template, builtin_template(cfg.template)
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):   # several named templates: the default one
        own = own.get("default")
    if not own:
        raise ConfigError(f"the tokenizer of {cfg.tokenizer or cfg.model} has no chat template",
                          hint="choose a built-in one with --template chatml (or plain), or pass --chat-template "
                               "FILE.jinja; it is saved with the output so `llmkit generate` uses it too")
    return "tokenizer", own


def prepare_tokenizer(tokenizer, template_name: str) -> list[str]:
    """Add the special tokens a built-in template needs; returns those added (the embeddings must grow)."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in TEMPLATE_TOKENS.get(template_name, ()) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token   # padding is masked by attention, never by id
    return missing


def special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)}
    return ids


def _template_line(exc: BaseException, template: str) -> str:
    """' (template line N: `...`)' from a Jinja error, when it knows the line."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None and line is None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    tb = exc.__traceback__
    while tb is not None:   # the innermost template frame is the most precise
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if not line:
        return ""
    lines = template.splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return f" (template line {line}: `{text[:100]}`)" if text else f" (template line {line})"


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:   # jinja2 syntax and runtime errors, raise_exception() in the template
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"the chat template failed to render {where}: {type(exc).__name__}: {first}"
                        f"{_template_line(exc, template)}",
                        hint="fix the template (--chat-template FILE) or the roles in the data; "
                             "`llmkit sft --preview 1` shows what a template makes of one example") from None


# ----------------------------------------------------------------------------------------------------- formats

def _fits(columns: list[str], table) -> list[str]:
    """Formats the columns could fit with the mapping flags."""
    lists = [c for c in columns if str(table.features[c]).startswith(("List", "Sequence", "["))]
    texts = [c for c in columns if c not in lists]
    fits = [f"messages/sharegpt with --messages-field {c}" for c in lists]
    if len(texts) >= 2:
        a, b = texts[0], texts[1]
        fits.append(f"prompt-completion with --prompt-field {a} --completion-field {b}")
        fits.append(f"alpaca with --instruction-field {a} --output-field {b}")
    return fits


def detect_format(cfg, columns: list[str], table, source: str) -> str:
    if cfg.messages_field:
        if cfg.messages_field not in columns:
            raise ConfigError(f"{source} has no column '{cfg.messages_field}' (--messages-field); columns: "
                              f"{', '.join(columns)}", hint="choose the column with --messages-field")
        return "messages" if cfg.format == "auto" else cfg.format
    if cfg.format != "auto":
        needed = {"alpaca": (cfg.instruction_field, cfg.output_field),
                  "prompt-completion": (cfg.prompt_field, cfg.completion_field)}.get(cfg.format)
        if needed is None:   # messages / sharegpt
            if not any(c in columns for c in MESSAGE_FIELDS):
                raise ConfigError(f"--format {cfg.format}: {source} has no 'messages' or 'conversations' column; "
                                  f"columns: {', '.join(columns)}", hint="name the column with --messages-field")
            return cfg.format
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ConfigError(f"--format {cfg.format}: {source} has no column {', '.join(map(repr, missing))}; "
                              f"columns: {', '.join(columns)}",
                              hint="map the columns with --instruction-field/--output-field or "
                                   "--prompt-field/--completion-field")
        return cfg.format
    if any(c in columns for c in MESSAGE_FIELDS):
        return "messages"
    if cfg.instruction_field in columns and cfg.output_field in columns:
        return "alpaca"
    if cfg.prompt_field in columns and cfg.completion_field in columns:
        return "prompt-completion"
    fits = _fits(columns, table)
    raise ConfigError(
        f"{source}: cannot tell the data format from its columns ({', '.join(columns) or 'none'})"
        + (f"; they could fit: {'; '.join(fits)}" if fits else ""),
        hint="formats: alpaca (instruction, input, output), messages/sharegpt (messages or conversations: a list "
             "of {role, content} or {from, value}), prompt-completion (prompt, completion); map other column "
             "names with the --*-field flags and set --format")


def _text(value) -> str:
    return "" if value is None else str(value)


def to_conversation(record: dict, fmt: str, cfg, row: int) -> list[dict]:
    """A record as a list of {role, content} messages (roles normalised); raises DataError on bad input."""
    where = f"row {row + 1}"
    if fmt == "alpaca":
        messages = []
        system = _text(record.get(cfg.system_field)).strip()
        if system:
            messages.append({"role": "system", "content": system})
        for pair in record.get("history") or []:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise DataError(f"{where}: 'history' must be a list of [instruction, output] pairs",
                                hint="fix the record or drop its history")
            messages += [{"role": "user", "content": _text(pair[0])}, {"role": "assistant", "content": _text(pair[1])}]
        prompt = _text(record.get(cfg.instruction_field))
        extra = _text(record.get(cfg.input_field))
        messages.append({"role": "user", "content": f"{prompt}\n\n{extra}" if extra.strip() else prompt})
        messages.append({"role": "assistant", "content": _text(record.get(cfg.output_field))})
    elif fmt == "prompt-completion":
        messages = [{"role": "user", "content": _text(record.get(cfg.prompt_field))},
                    {"role": "assistant", "content": _text(record.get(cfg.completion_field))}]
    else:
        key = cfg.messages_field or next(c for c in MESSAGE_FIELDS if c in record)
        raw = record.get(key)
        if not isinstance(raw, (list, tuple)):
            raise DataError(f"{where}: '{key}' must be a list of messages (got {type(raw).__name__})",
                            hint="each message is {role, content} or {from, value}")
        messages = []
        for turn, message in enumerate(raw, 1):
            if not isinstance(message, dict):
                raise DataError(f"{where}, message {turn}: a message must be an object with role and content",
                                hint="each message is {role, content} or {from, value}")
            role = message.get("role", message.get("from"))
            content = message.get("content", message.get("value"))
            if role not in ROLES:
                raise DataError(f"{where}, message {turn}: unknown role {role!r}",
                                hint="roles are system, user, assistant (sharegpt: system, human, gpt)")
            messages.append({"role": ROLES[role], "content": _text(content)})
    for turn, message in enumerate(messages, 1):
        if message["role"] == "assistant" and not message["content"].strip():
            raise DataError(f"{where}, message {turn}: the assistant reply is empty, so there is nothing to train on",
                            hint="fill in or remove the reply (or the row)")
    return messages


# ---------------------------------------------------------------------------------------------------- encoding

def _spans(tokenizer, template: str, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant reply."""
    full = render(tokenizer, template, messages, False, where)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render_prompt_only(tokenizer, template, messages[:i], where)
        upto = render(tokenizer, template, messages[:i + 1], False, where)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise DataError(f"the chat template is not prefix-stable at {where}, message {i + 1}: rendering the "
                            "conversation up to a reply is not a prefix of rendering the whole conversation, so the "
                            "reply's tokens cannot be located",
                            hint="use a template that renders earlier turns the same way whatever follows "
                                 "(--template chatml), or --multi-turn last / single-turn data")
        spans.append((len(before), len(upto)))
    return full, spans


def _render_prompt_only(tokenizer, template: str, messages: list[dict], where: str) -> str:
    if not messages:
        try:
            return render(tokenizer, template, messages, True, where)
        except DataError:
            return ""   # some templates refuse an empty conversation: nothing comes before the first reply
    return render(tokenizer, template, messages, True, where)


def _token_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], where: str) -> list[list[int]]:
    """Token indices of each character span; a token straddling a span boundary is an error."""
    bounds = sorted({b for span in spans for b in span})
    result: list[list[int]] = [[] for _ in spans]
    for t, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        for b in bounds:
            if start < b < end:
                raise DataError(f"{where}: a token crosses the boundary of an assistant reply (characters "
                                f"{start}-{end} around {b}), so the reply's tokens are ambiguous",
                                hint="end each turn of the template with a special token or a newline, e.g. "
                                     "--template chatml")
        for k, (a, b) in enumerate(spans):
            if a <= start < b:
                result[k].append(t)
    return result


def encode_records(records: list[dict], fmt: str, tokenizer, template_name: str, template: str, cfg,
                   source: str, limit: int | None = None) -> Encoded:
    """Every record as training examples (--multi-turn, --train-on-prompt and --seq-len applied)."""
    out = Encoded(examples=[], format=fmt, template_name=template_name, template=template, records=len(records))
    texts, spans_of, rows, trailing = [], [], [], 0
    for row, record in enumerate(records):
        if limit is not None and len(rows) >= limit:
            break
        messages = to_conversation(record, fmt, cfg, row)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            out.dropped["no assistant reply"] = out.dropped.get("no assistant reply", 0) + 1
            continue
        if last != len(messages) - 1:
            trailing += 1
            messages = messages[:last + 1]
        text, spans = _spans(tokenizer, template, messages, f"row {row + 1}")
        texts.append(text)
        spans_of.append(spans)
        rows.append(row)
    if trailing:
        out.warnings.append(f"{source}: {trailing:,} conversation(s) end with a turn after the last assistant reply; "
                            "those trailing turns have nothing to train on and were left out")
    if not texts:
        return out
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    specials = special_ids(tokenizer)
    seq_len = cfg.seq_len
    for text_ids, offsets, spans, row in zip(encoded["input_ids"], encoded["offset_mapping"], spans_of, rows):
        ids = list(text_ids)
        token_spans = _token_spans([tuple(o) for o in offsets], spans, f"row {row + 1}")
        if out.end_token_id is None and token_spans[0]:
            ends = [ids[t] for t in token_spans[0] if ids[t] in specials]
            out.end_token_id = ends[-1] if ends else -1
        if cfg.multi_turn == "expand":
            pieces = [(token_spans[k][-1] + 1 if token_spans[k] else 0, [k]) for k in range(len(spans))]
        elif cfg.multi_turn == "last":
            pieces = [(len(ids), [len(spans) - 1])]
        else:
            pieces = [(len(ids), list(range(len(spans))))]
        for length, chosen in pieces:
            piece = ids[:length]
            if cfg.train_on_prompt:
                labels = list(piece)
            else:
                labels = [IGNORE] * len(piece)
                for k in chosen:
                    for t in token_spans[k]:
                        if t < length:
                            labels[t] = piece[t]
            if not any(label != IGNORE for label in labels):
                out.dropped["no trained token"] = out.dropped.get("no trained token", 0) + 1
                continue
            if len(piece) > seq_len and cfg.multi_turn == "last":
                # cut from the left: the earliest context goes, the final reply stays whole (every one of its
                # tokens a target, so at least one context token before it); a reply that cannot fit is dropped
                reply = token_spans[chosen[0]]
                if not reply or len(piece) - reply[0] + 1 > seq_len:
                    out.dropped["every answer token cut by --seq-len"] = \
                        out.dropped.get("every answer token cut by --seq-len", 0) + 1
                    continue
                piece, labels = piece[-seq_len:], labels[-seq_len:]
                out.truncated += 1
            elif len(piece) > seq_len:
                piece, labels = piece[:seq_len], labels[:seq_len]
                if not any(label != IGNORE for label in labels[1:]):
                    out.dropped["every answer token cut by --seq-len"] = \
                        out.dropped.get("every answer token cut by --seq-len", 0) + 1
                    continue
                out.truncated += 1
            out.examples.append(Example(input_ids=piece, labels=labels, row=row))
    if out.end_token_id == -1:
        out.end_token_id = None
    return out


def load_records(cfg, source: str):
    """(records, format) of a source the shared loader reads."""
    from llmkit.data.loading import load_table

    table = load_table(source)
    columns = list(table.column_names)
    fmt = detect_format(cfg, columns, table, source)
    return table.to_list(), fmt


def encode_source(cfg, tokenizer, template_name: str, template: str, source: str,
                  limit: int | None = None, require: bool = True) -> Encoded:
    records, fmt = load_records(cfg, source)
    encoded = encode_records(records, fmt, tokenizer, template_name, template, cfg, source, limit)
    dropped = sum(encoded.dropped.values())
    if dropped:
        reasons = ", ".join(f"{n:,} {why}" for why, n in encoded.dropped.items())
        encoded.warnings.append(f"{source}: dropped {dropped:,} example(s) without a trained token ({reasons})")
    if require and not encoded.examples:
        cut = encoded.dropped.get("every answer token cut by --seq-len", 0)
        if cut:
            raise DataError(f"{source}: every example is longer than --seq-len {cfg.seq_len} up to its answer, so "
                            f"no answer token is left to train on ({cut:,} example(s) cut)",
                            hint="raise --seq-len, or shorten the prompts")
        raise DataError(f"{source}: no example has a token to train on "
                        f"({', '.join(f'{n:,} {why}' for why, n in encoded.dropped.items()) or 'no records'})",
                        hint="each example needs an assistant reply (check --format and the field flags)")
    return encoded


# ------------------------------------------------------------------------------------------------------ packing

def pack_examples(examples: list[Example], seq_len: int) -> list[dict]:
    """Examples packed into blocks of at most seq_len tokens, best-fit decreasing (each example, longest first, goes
    into the fullest block it fits); position ids restart per example. Examples are never split."""
    import bisect

    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    members: list[list[int]] = []
    free: list[tuple[int, int]] = []          # (room left, block index), sorted
    for i in order:
        n = len(examples[i].input_ids)
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, block = free.pop(at)
        else:
            room, block = seq_len, len(members)
            members.append([])
        members[block].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, block))
    blocks = []
    for block in members:
        block = sorted(block)                 # the data's order inside a block
        blocks.append({"input_ids": [t for i in block for t in examples[i].input_ids],
                       "labels": [t for i in block for t in examples[i].labels],
                       "position_ids": [p for i in block for p in range(len(examples[i].input_ids))]})
    return blocks
