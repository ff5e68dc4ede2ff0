"""SFT data: records -> conversations -> token ids with labels that train exactly the assistant replies.

Formats (detected from the columns, or set with --format): alpaca (instruction / input / output, optional system
and history), messages / sharegpt (a list of {role, content} or {from, value}, an optional system column), prompt /
completion pairs (strings, or TRL's conversational message lists: only the completion is trained). OpenAI content
parts are joined text (any other part is refused); tool calls, tool results and a `tools` column go to the template
as transformers passes them, and a template that leaves one of them out is refused.

Masks come from rendering the conversation prefix by prefix with the chat template: a reply is trained as the model
sees it when generating it, so its trained tokens are what rendering it adds after the generation prompt of the
turns before it, end-of-turn / eos token included. This works for any template, without `{% generation %}` tags.
When each rendered prefix is a prefix of the whole rendering, the whole text is one example; a template that
rewrites earlier turns once later ones exist (Qwen3, DeepSeek-R1: past reasoning stripped) gets one example per
reply instead, each with its own context (with a warning), as --multi-turn expand always does. Each text is
tokenized once, without added special tokens (the template holds them), and tokens are assigned to replies by
character offsets; a token that straddles a reply boundary is an error. The text of a special token inside a
message (a reply quoting `<|im_end|>`) is encoded as text, never as the token.

Longer than --seq-len: cut on the right, except with --multi-turn last, which cuts the earliest context on the
left and keeps the final reply whole (an example whose final reply alone does not fit is dropped and counted).

Labels equal input_ids where trained and -100 elsewhere; the shift happens in the model's loss.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources

from llmkit.errors import ConfigError, DataError

IGNORE = -100
FORMATS = ("alpaca", "messages", "sharegpt", "prompt-completion")
BUILTIN_TEMPLATES = ("chatml", "plain")
TEMPLATE_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>")}   # added to a tokenizer that lacks them
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "model": "assistant", "bot": "assistant", "tool": "tool", "observation": "tool"}
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
    end_token_known: bool = False         # the first example with reply tokens was seen (end_token_id is final)
    trailing: int = 0                     # conversations whose turns after the last reply were left out
    rewritten: int = 0                    # conversations whose template rewrites earlier turns (one example a reply)
    # (row, message number, text) of each conversation with a special token's text in a message (encoded as text)
    special_text: list[tuple[int, int, str]] = field(default_factory=list)
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


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool, where: str,
           tools: list[dict] | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, tools=tools,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:   # jinja2 syntax and runtime errors, raise_exception() in the template
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"the chat template failed to render {where}: {type(exc).__name__}: {first}"
                        f"{_template_line(exc, template)}",
                        hint="fix the template (--chat-template FILE) or the roles in the data; "
                             "`llmkit sft --preview 1` shows what a template makes of one example") from None


# ----------------------------------------------------------------------------------------------------- formats

def _fits(columns: list[str], records: list[dict]) -> list[str]:
    """Formats the columns could fit with the mapping flags."""
    lists = [c for c in columns if isinstance(records[0].get(c), (list, tuple))]
    texts = [c for c in columns if c not in lists]
    fits = [f"messages/sharegpt with --messages-field {c}" for c in lists]
    if len(texts) >= 2:
        a, b = texts[0], texts[1]
        fits.append(f"prompt-completion with --prompt-field {a} --completion-field {b}")
        fits.append(f"alpaca with --instruction-field {a} --output-field {b}")
    return fits


def detect_format(cfg, columns: list[str], records: list[dict], source: str) -> str:
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
    fits = _fits(columns, records)
    raise ConfigError(
        f"{source}: cannot tell the data format from its columns ({', '.join(columns) or 'none'})"
        + (f"; they could fit: {'; '.join(fits)}" if fits else ""),
        hint="formats: alpaca (instruction, input, output), messages/sharegpt (messages or conversations: a list "
             "of {role, content} or {from, value}), prompt-completion (prompt, completion); map other column "
             "names with the --*-field flags and set --format")


def _text(value) -> str:
    return "" if value is None else str(value)


def _field(raw: dict, *keys: str):
    """The first of `keys` with a value (a column missing from some rows reads None in an Arrow table)."""
    return next((raw[k] for k in keys if raw.get(k) is not None), None)


def _content(value, where: str) -> str:
    """A message's content as text: OpenAI content parts are joined in order, with nothing between them (as the
    chat templates that take parts write them); a part that is not text is refused, never dropped."""
    if not isinstance(value, (list, tuple)):
        return _text(value)
    texts = []
    for number, part in enumerate(value, 1):
        kind = part.get("type", "text" if "text" in part else None) if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"a '{kind}' part" if kind else f"part {number} is not a {{type, text}} object"
            raise DataError(f"{where}: content {what}; llmkit trains text models, so only text parts can be trained",
                            hint="remove the non-text parts (or the row); text parts are {\"type\": \"text\", "
                                 "\"text\": \"...\"}")
        texts.append(part["text"])
    return "".join(texts)


def _tool_calls(value, where: str) -> list[dict]:
    """OpenAI tool calls ({type, id, function: {name, arguments}}; a bare {name, arguments} is wrapped), arguments
    kept as given (an object, or the JSON string OpenAI's API writes)."""
    calls = value if isinstance(value, (list, tuple)) else [value]
    normalised = []
    for call in calls:
        function = call.get("function") or call if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise DataError(f"{where}: a tool call must be an object with a function name (got {call!r:.80})",
                            hint="write tool calls as {\"type\": \"function\", \"function\": {\"name\": ..., "
                                 "\"arguments\": {...}}}")
        arguments = function.get("arguments")
        normalised.append({**({"id": call["id"]} if call.get("id") is not None else {}), "type": "function",
                           "function": {"name": function["name"], "arguments": {} if arguments is None else arguments}})
    return normalised


def _sharegpt_function_call(value, where: str) -> list[dict]:
    """LLaMA-Factory's sharegpt function_call turn: a JSON {name, arguments} (or a list of them) as its value."""
    import json

    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: a function_call turn must hold JSON {{\"name\", \"arguments\"}}: {exc.msg}",
                        hint="write the call as {\"name\": \"...\", \"arguments\": {...}}") from None
    return _tool_calls(parsed, where)


def _message(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a message must be an object with role and content",
                        hint="each message is {role, content} or {from, value}")
    role = _field(raw, "role", "from")
    content = _field(raw, "content", "value")
    if role == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": _sharegpt_function_call(content, where)}
    if role not in ROLES:
        raise DataError(f"{where}: unknown role {role!r}",
                        hint="roles are system, user, assistant, tool (sharegpt: system, human, gpt, "
                             "function_call, observation)")
    message = {"role": ROLES[role], "content": _content(content, where)}
    if raw.get("tool_calls"):
        if message["role"] != "assistant":
            raise DataError(f"{where}: only an assistant message can make tool calls (this one is {role!r})",
                            hint="move the tool_calls to the assistant message that makes them")
        message["tool_calls"] = _tool_calls(raw["tool_calls"], where)
    if message["role"] == "tool":
        message.update({k: raw[k] for k in ("name", "tool_call_id") if raw.get(k) is not None})
    return message


def _messages(raw, where: str, what: str) -> list[dict]:
    if not isinstance(raw, (list, tuple)):
        raise DataError(f"{where}: '{what}' must be a list of messages (got {type(raw).__name__})",
                        hint="each message is {role, content} or {from, value}")
    messages = [_message(message, f"{where}, message {turn}") for turn, message in enumerate(raw, 1)]
    for turn, message in enumerate(messages, 1):
        if message["role"] == "assistant" and not message["content"].strip() and not message.get("tool_calls"):
            raise DataError(f"{where}, message {turn}: the assistant reply is empty, so there is nothing to train on",
                            hint="fill in or remove the reply (or the row)")
    return messages


def _tool_definitions(record: dict, where: str) -> list[dict] | None:
    """The `tools` column (TRL, LLaMA-Factory): tool definitions, passed to the template as `tools`."""
    import json

    tools = record.get("tools")
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: 'tools' is not valid JSON: {exc.msg}",
                            hint="write tools as a list of JSON tool definitions") from None
    if not tools:
        return None
    if not isinstance(tools, (list, tuple)) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"{where}: 'tools' must be a list of tool definitions (objects)",
                        hint="write tools as [{\"type\": \"function\", \"function\": {\"name\": ...}}]")
    return list(tools)


@dataclass
class Conversation:
    messages: list[dict]                  # {role, content} (+ tool_calls; name / tool_call_id of a tool result)
    first_reply: int = 0                  # assistant messages before it are context (a conversational prompt)
    tools: list[dict] | None = None       # tool definitions, passed to the chat template as `tools`


def to_conversation(record: dict, fmt: str, cfg, row: int, source: str) -> Conversation:
    """A record as a conversation (roles normalised); raises DataError on bad input."""
    where = f"{source}: row {row + 1}"
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
        return Conversation(_messages(messages, where, "messages"))
    if fmt == "prompt-completion":
        # a side is a string (one user / assistant turn) or, as TRL's conversational prompt-completion, messages
        sides = []
        for name, role in ((cfg.prompt_field, "user"), (cfg.completion_field, "assistant")):
            value = record.get(name)
            sides.append(_messages(value, f"{where}, {name}", name) if isinstance(value, (list, tuple))
                         else [{"role": role, "content": _text(value)}])
        prompt, completion = sides
        return Conversation(_messages(prompt + completion, where, "messages"), first_reply=len(prompt),
                            tools=_tool_definitions(record, where))
    key = cfg.messages_field or next(c for c in MESSAGE_FIELDS if c in record)
    messages = _messages(record.get(key), where, key)
    system = _text(record.get(cfg.system_field)).strip()   # sharegpt's top-level system column
    if system:
        if messages and messages[0]["role"] == "system" and messages[0]["content"].strip() != system:
            raise DataError(f"{where}: both the '{cfg.system_field}' column and the first message give a system "
                            "prompt, and they differ", hint="keep one of them")
        if not messages or messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
    return Conversation(messages, tools=_tool_definitions(record, where))


# ---------------------------------------------------------------------------------------------------- encoding

@dataclass
class _Rendering:
    """One rendered text, tokenized into one example: the messages it renders and its trained character spans."""
    messages: list[dict]
    text: str
    spans: list[tuple[int, int]]
    tools: list[dict] | None = None


def _renderings(tokenizer, template: str, conversation: Conversation, multi_turn: str,
                where: str) -> tuple[list[_Rendering], bool]:
    """The texts to tokenize for one conversation, and whether its replies became one example each because the
    template rewrites earlier turns.

    A reply is trained as the model sees it when generating it: after render(the turns before it,
    add_generation_prompt), its trained text is what rendering it adds. One rendering of the whole conversation
    gives every reply that context only when each such prefix is a prefix of the whole; templates that rewrite
    earlier turns once later ones exist (Qwen3 and DeepSeek-R1 strip the reasoning of past replies) break that, and
    their replies are rendered one per example with their own context, as --multi-turn expand always does."""
    messages, tools = conversation.messages, conversation.tools
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= conversation.first_reply]
    if multi_turn == "last":
        replies = replies[-1:]
    if multi_turn != "expand":
        full = render(tokenizer, template, messages, False, where, tools)
        spans = []
        for i in replies:
            before = _render_prompt_only(tokenizer, template, messages[:i], where, tools)
            upto = full if i == len(messages) - 1 else render(tokenizer, template, messages[:i + 1], False, where,
                                                              tools)
            if not (full.startswith(upto) and upto.startswith(before)):
                break
            spans.append((len(before), len(upto)))
        else:
            return [_Rendering(messages, full, spans, tools)], False
    renderings = []
    for i in replies:
        context = _render_prompt_only(tokenizer, template, messages[:i], where, tools)
        whole = render(tokenizer, template, messages[:i + 1], False, where, tools)
        if not whole.startswith(context):
            same = len(os.path.commonprefix([context, whole]))
            raise DataError(f"the chat template does not write the reply at {where}, message {i + 1} after its own "
                            f"generation prompt: after {context[max(0, same - 30):same]!r} the generation prompt "
                            f"goes on {context[same:same + 30]!r} but the rendered reply {whole[same:same + 30]!r}, "
                            "so the reply's tokens cannot be located",
                            hint="make the template's add_generation_prompt branch write exactly what it writes "
                                 "before an assistant reply (the same header), or use --template chatml")
        renderings.append(_Rendering(messages[:i + 1], whole, [(len(context), len(whole))], tools))
    return renderings, multi_turn == "all"


def _render_prompt_only(tokenizer, template: str, messages: list[dict], where: str,
                        tools: list[dict] | None) -> str:
    if not messages:
        try:
            return render(tokenizer, template, messages, True, where, tools)
        except DataError:
            return ""   # some templates refuse an empty conversation: nothing comes before the first reply
    return render(tokenizer, template, messages, True, where, tools)


def _check_tools_rendered(tokenizer, template: str, conversation: Conversation, where: str) -> None:
    """A template that does not know tool turns may leave them out without an error: each tool result, tool call
    and tool definition is rendered as a marker (private-use characters, which no template writes), and every
    marker must come out."""
    parts: list[str] = []

    def mark(what: str) -> str:
        parts.append(what)
        return f"\ue002{len(parts) - 1}\ue003"

    messages = []
    for turn, message in enumerate(conversation.messages, 1):
        message = dict(message)
        if message["role"] == "tool":
            message["content"] = mark(f"the tool result in message {turn}")
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {**call, "function": {**call["function"],
                                      "name": mark(f"the tool call {call['function']['name']!r} in message {turn}")}}
                for call in message["tool_calls"]]
        messages.append(message)
    tools = []
    for tool in conversation.tools or []:
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if isinstance(function.get("name"), str):
            marked = {**function, "name": mark(f"the definition of the tool {function['name']!r}")}
            tool = {**tool, "function": marked} if function is not tool else marked
        tools.append(tool)
    if not parts:
        return
    text = render(tokenizer, template, messages, False, where, tools or None)
    missing = [what for k, what in enumerate(parts) if f"\ue002{k}\ue003" not in text]
    if missing:
        more = f" (and {len(missing) - 1} more tool part(s))" if len(missing) > 1 else ""
        raise DataError(f"{where}: the chat template leaves out {missing[0]}{more}, so the conversation would be "
                        "trained without it",
                        hint="use a chat template that renders tools: the model's own, or --template chatml / plain "
                             "(tool calls as JSON in the assistant turn, results as a tool turn)")


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


# A message's text may hold a special token's text (a reply quoting `<|im_end|>`): it is encoded as text, or the
# model would learn to stop mid-answer. Message contents are located by rendering a placeholder in place of each
# (Unicode private-use characters, which no template writes).
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def _special_texts(tokenizer) -> dict[int, str]:
    """id -> text of each special token that the tokenizer reads from text as that token."""
    return {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def _content_ranges(tokenizer, template: str, rendering: _Rendering, where: str,
                    quoted: str) -> list[tuple[int, int]]:
    """Character ranges of the message contents in rendering.text; `quoted` says which message holds what."""
    marked = [{**m, "content": f"\ue000{k}\ue001"} for k, m in enumerate(rendering.messages)]
    masked = render(tokenizer, template, marked, False, where, rendering.tools)
    text, ranges, at = "", [], 0
    for match in _PLACEHOLDER.finditer(masked):
        content = rendering.messages[int(match.group(1))]["content"]
        text += masked[at:match.start()]
        ranges.append((len(text), len(text) + len(content)))
        text += content
        at = match.end()
    if text + masked[at:] != rendering.text:
        raise DataError(f"{quoted}, which llmkit encodes as text, but this chat template changes message contents "
                        "as it renders them (strips or splits them), so the template's own special tokens cannot be "
                        "told apart from the message's text",
                        hint="remove the special-token text from that message, or use a template that writes "
                             "message contents unchanged")
    return ranges


def _encode_contents_as_text(tokenizer, text: str, ids: list[int], offsets: list[tuple[int, int]],
                             ranges: list[tuple[int, int]], special_texts: dict[int, str],
                             quoted: str) -> tuple[list[int], list[tuple[int, int]]]:
    """ids and offsets of `text` with the special tokens inside message contents encoded as text (the tokenizer's
    split_special_tokens); the template's own special tokens stay. The tokenizer already reads the text between
    two special tokens on its own, so only such a stretch holding a message's special token is encoded again."""
    def read_from(t):   # a special token read from its text (not, say, an unknown character's <unk>)
        start, end = offsets[t]
        return ids[t] in special_texts and special_texts[ids[t]] in text[start:end]

    def in_content(t):
        return any(a <= offsets[t][0] and offsets[t][1] <= b for a, b in ranges)

    marks = [t for t in range(len(ids)) if read_from(t) and not in_content(t)]   # the template's own
    new_ids, new_offsets = [], []
    for left, right in zip([-1] + marks, marks + [len(ids)]):
        if left >= 0:
            new_ids.append(ids[left])
            new_offsets.append(offsets[left])
        if not any(read_from(t) for t in range(left + 1, right)):
            new_ids += ids[left + 1:right]
            new_offsets += offsets[left + 1:right]
            continue
        start = offsets[left][1] if left >= 0 else 0
        end = offsets[right][0] if right < len(ids) else len(text)
        if tokenizer(text[start:end], add_special_tokens=False)["input_ids"] != ids[left + 1:right]:
            raise DataError(f"{quoted}, which llmkit encodes as text, but this tokenizer reads the text around it "
                            "differently on its own than in context, so it cannot be encoded apart exactly",
                            hint="remove the special-token text from that message")
        piece = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True,
                          split_special_tokens=True)
        if any(i in special_texts and special_texts[i] in text[start + a:start + b]
               for i, (a, b) in zip(piece["input_ids"], piece["offset_mapping"])):
            raise DataError(f"{quoted}, which llmkit encodes as text, but this tokenizer's vocabulary holds that "
                            "text as a piece, so even as text it becomes the special token",
                            hint="remove the special-token text from that message")
        new_ids += piece["input_ids"]
        new_offsets += [(a + start, b + start) for a, b in piece["offset_mapping"]]
    return new_ids, new_offsets


def encode_records(records: list[dict], fmt: str, tokenizer, template_name: str, template: str, cfg,
                   source: str, limit: int | None = None, first_row: int = 0) -> Encoded:
    """Every record as training examples (--multi-turn, --train-on-prompt and --seq-len applied); `first_row` is
    the source row of records[0] (a chunk of a larger source)."""
    out = Encoded(examples=[], format=fmt, template_name=template_name, template=template, records=len(records))
    renderings, rows, contents, quoted, conversations = [], [], {}, {}, 0
    special_texts = _special_texts(tokenizer)
    special_text = re.compile("|".join(re.escape(t) for t in sorted(set(special_texts.values()), key=len,
                                                                     reverse=True))) if special_texts else None
    for row, record in enumerate(records, first_row):
        if limit is not None and conversations >= limit:
            break
        where = f"row {row + 1}"
        conversation = to_conversation(record, fmt, cfg, row, source)
        messages = conversation.messages
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= conversation.first_reply),
                   default=None)
        if last is None:
            out.dropped["no assistant reply"] = out.dropped.get("no assistant reply", 0) + 1
            continue
        if last != len(messages) - 1:
            out.trailing += 1
            messages = conversation.messages = messages[:last + 1]
        conversations += 1
        _check_tools_rendered(tokenizer, template, conversation, f"{source}: {where}")
        row_renderings, per_reply = _renderings(tokenizer, template, conversation, cfg.multi_turn, where)
        out.rewritten += per_reply
        literal = next(((turn, found.group()) for turn, m in enumerate(messages, 1)
                        if special_text and (found := special_text.search(m["content"]))), None)
        if literal:
            out.special_text.append((row, *literal))
            quoted[row] = f"{where}, message {literal[0]} holds the text of the special token {literal[1]!r}"
        for rendering in row_renderings:
            if literal:
                contents[len(renderings)] = _content_ranges(tokenizer, template, rendering, where, quoted[row])
            renderings.append(rendering)
            rows.append(row)
    out.warnings.extend(conversation_warnings(out, source))
    if not renderings:
        return out
    encoded = tokenizer([r.text for r in renderings], add_special_tokens=False, return_offsets_mapping=True)
    specials = special_ids(tokenizer)
    seq_len = cfg.seq_len
    for k, (rendering, row) in enumerate(zip(renderings, rows)):
        ids, offsets = list(encoded["input_ids"][k]), [tuple(o) for o in encoded["offset_mapping"][k]]
        if k in contents:
            ids, offsets = _encode_contents_as_text(tokenizer, rendering.text, ids, offsets, contents[k],
                                                    special_texts, quoted[row])
        token_spans = _token_spans(offsets, rendering.spans, f"row {row + 1}")
        if not out.end_token_known and token_spans[0]:
            ends = [ids[t] for t in token_spans[0] if ids[t] in specials]
            out.end_token_id, out.end_token_known = (ends[-1] if ends else None), True
        if cfg.train_on_prompt:
            labels = list(ids)
        else:
            labels = [IGNORE] * len(ids)
            for t in (t for reply in token_spans for t in reply):
                labels[t] = ids[t]
        if not any(label != IGNORE for label in labels):
            out.dropped["no trained token"] = out.dropped.get("no trained token", 0) + 1
            continue
        if len(ids) > seq_len and cfg.multi_turn == "last":
            # cut from the left: the earliest context goes, the final reply stays whole (every one of its
            # tokens a target, so at least one context token before it); a reply that cannot fit is dropped
            reply = token_spans[0]
            if not reply or len(ids) - reply[0] + 1 > seq_len:
                out.dropped["every answer token cut by --seq-len"] = \
                    out.dropped.get("every answer token cut by --seq-len", 0) + 1
                continue
            ids, labels = ids[-seq_len:], labels[-seq_len:]
            out.truncated += 1
        elif len(ids) > seq_len:
            ids, labels = ids[:seq_len], labels[:seq_len]
            if not any(label != IGNORE for label in labels[1:]):
                out.dropped["every answer token cut by --seq-len"] = \
                    out.dropped.get("every answer token cut by --seq-len", 0) + 1
                continue
            out.truncated += 1
        out.examples.append(Example(input_ids=ids, labels=labels, row=row))
    return out


def conversation_warnings(encoded: Encoded, source: str) -> list[str]:
    """What encoding changed about whole conversations (from the counts, so chunks of a source add up)."""
    warnings = []
    if encoded.trailing:
        warnings.append(f"{source}: {encoded.trailing:,} conversation(s) end with a turn after the last assistant "
                        "reply; those trailing turns have nothing to train on and were left out")
    if encoded.rewritten:
        warnings.append(f"{source}: in {encoded.rewritten:,} conversation(s) the chat template renders earlier "
                        "turns differently once later turns follow (it rewrites them, e.g. drops past reasoning), "
                        "so each of their replies is trained as its own example, with the context the template "
                        "renders when that reply is generated (as --multi-turn expand)")
    return warnings


def load_records(cfg, source: str):
    """(records, format) of a source the shared loader reads."""
    from pathlib import Path

    from llmkit.data.loading import load_table, read_json, read_jsonl, source_kind

    # JSON is read as it is, not through an Arrow table: Arrow refuses a column that holds text in some messages
    # and content parts in others, and gives every tool call's arguments the keys of all the others (as None)
    readers = {"jsonl": read_jsonl, "json": read_json}
    kind = source_kind(source)
    records = readers[kind](Path(source).expanduser()) if kind in readers else \
        load_table(source, revision=cfg.data_revision, seed=cfg.seed).to_list()
    if not records:
        raise DataError(f"{source} holds no records", hint="give a file with at least one record")
    columns = list(dict.fromkeys(column for record in records for column in record))
    return records, detect_format(cfg, columns, records, source)


def encode_source(cfg, tokenizer, template_name: str, template: str, source: str,
                  limit: int | None = None, require: bool = True) -> Encoded:
    records, fmt = load_records(cfg, source)
    encoded = encode_records(records, fmt, tokenizer, template_name, template, cfg, source, limit)
    finish_source(encoded, cfg, source, len(encoded.examples), require)
    return encoded


def finish_source(encoded: Encoded, cfg, source: str, examples: int, require: bool = True) -> None:
    """The warning for dropped examples; with `require`, the error when no example is left to train on."""
    dropped = sum(encoded.dropped.values())
    if dropped:
        reasons = ", ".join(f"{n:,} {why}" for why, n in encoded.dropped.items())
        encoded.warnings.append(f"{source}: dropped {dropped:,} example(s) without a trained token ({reasons})")
    if require and not examples:
        cut = encoded.dropped.get("every answer token cut by --seq-len", 0)
        if cut:
            raise DataError(f"{source}: every example is longer than --seq-len {cfg.seq_len} up to its answer, so "
                            f"no answer token is left to train on ({cut:,} example(s) cut)",
                            hint="raise --seq-len, or shorten the prompts")
        raise DataError(f"{source}: no example has a token to train on "
                        f"({', '.join(f'{n:,} {why}' for why, n in encoded.dropped.items()) or 'no records'})",
                        hint="each example needs an assistant reply (check --format and the field flags)")


# ------------------------------------------------------------------------------------------------------ packing

def pack_examples(examples: list[Example], seq_len: int) -> list[dict]:
    """Examples packed into blocks of at most seq_len tokens (`pack_blocks`); position ids restart per example."""
    members, starts = pack_blocks([len(e.input_ids) for e in examples], seq_len)
    blocks = []
    for block in (members[a:b].tolist() for a, b in zip(starts[:-1], starts[1:])):
        blocks.append({"input_ids": [t for i in block for t in examples[i].input_ids],
                       "labels": [t for i in block for t in examples[i].labels],
                       "position_ids": [p for i in block for p in range(len(examples[i].input_ids))]})
    return blocks


def pack_blocks(lengths, seq_len: int):
    """Best-fit decreasing: each example, longest first, goes into the fullest block it fits (the first such
    block on a tie); examples are never split. Returns (example indices grouped by block, in the data's order
    inside a block; block start offsets into them)."""
    import bisect
    import heapq

    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    block_of = np.empty(len(order), dtype=np.int64)
    open_blocks: dict[int, list[int]] = {}     # room left -> heap of the blocks with that room
    rooms: list[int] = []                      # the rooms with an open block, sorted
    blocks = 0
    for i in order.tolist():
        n = int(lengths[i])
        at = bisect.bisect_left(rooms, n)
        if at < len(rooms):
            room = rooms[at]
            block = heapq.heappop(open_blocks[room])
            if not open_blocks[room]:
                del open_blocks[room], rooms[at]
        else:
            room, block, blocks = seq_len, blocks, blocks + 1
        block_of[i] = block
        if room - n > 0:
            if room - n not in open_blocks:
                open_blocks[room - n] = []
                bisect.insort(rooms, room - n)
            heapq.heappush(open_blocks[room - n], block)
    members = np.argsort(block_of, kind="stable")
    return members, np.concatenate([[0], np.cumsum(np.bincount(block_of, minlength=blocks))])
