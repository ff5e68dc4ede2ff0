"""An interactive chat session over a Generator: turns, /commands, saving; no input() and no signals here (the
REPL lives in the CLI)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError
from llmkit.inference.generator import DECODING_FLAGS, Generator, OnText, Timings

CHAT_COMMANDS = ("/reset", "/system TEXT", "/set KEY=VALUE ...", "/params", "/save FILE", "/exit")


# ------------------------------------------------------------------------------------------------------- chat

@dataclass
class ChatTurn:
    user: str
    prompt: str                   # the whole conversation as the template rendered it for this answer
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    timings: Timings


@dataclass
class ChatReply:
    kind: str                     # answer | info | error | exit
    message: str = ""
    turn: ChatTurn | None = None


class ChatSession:
    """A multi-turn conversation: history rendered with the chat template, slash commands, per-session params."""

    def __init__(self, generator: Generator, system: str | None = None):
        self.generator = generator
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.turns: list[ChatTurn] = []
        self.overrides: dict[str, Any] = {}
        generator.render_messages([{"role": "user", "content": "hi"}])  # fail now if there is no template
        self.gc = generator.generation_config()

    def conversation(self) -> list[dict[str, str]]:
        return self.generator.with_system(self.messages, self.system)

    def handle(self, line: str, on_text: OnText | None = None,
               stop_event: threading.Event | None = None) -> ChatReply:
        text = line.rstrip("\n")
        if text.startswith("/"):
            return self._command(text)
        if not text.strip():
            return ChatReply("info", "")
        self.messages.append({"role": "user", "content": text})
        prompt = self.generator.render_messages(self.conversation())
        try:
            result = self.generator.complete(prompt, chat=True, on_text=on_text, stop_event=stop_event, gc=self.gc)
        except BaseException:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": result.text})
        turn = ChatTurn(user=text, prompt=prompt, text=result.text, prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens, finish_reason=result.finish_reason,
                        timings=result.timings)
        self.turns.append(turn)
        return ChatReply("answer", turn=turn)

    def help(self) -> str:
        return "commands: " + ", ".join(CHAT_COMMANDS) + " (Ctrl-C stops an answer, Ctrl-D leaves)"

    def params(self) -> dict[str, Any]:
        return self.generator.params_of(self.gc)

    def _command(self, text: str) -> ChatReply:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name == "/exit" or name == "/quit":
            return ChatReply("exit")
        if name == "/reset":
            self.messages.clear()
            return ChatReply("info", "conversation cleared" + (" (the system message stays)" if self.system else ""))
        if name == "/system":
            self.system = rest or None
            return ChatReply("info", f"system message set: {rest}" if rest else "system message removed")
        if name == "/params":
            return ChatReply("info", "  ".join(f"{k}={v}" for k, v in self.params().items()))
        if name == "/set":
            return self._set(rest)
        if name == "/save":
            if not rest:
                return ChatReply("error", "usage: /save FILE")
            path = Path(rest).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"messages": self.conversation(), "params": self.params()},
                                           ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            except OSError as exc:
                return ChatReply("error", f"cannot write {path}: {exc.strerror or exc}")
            return ChatReply("info", f"saved {len(self.conversation())} messages to {path}")
        if name == "/help":
            return ChatReply("info", self.help())
        return ChatReply("error", f"unknown command {name}; {self.help()}")

    def _set(self, rest: str) -> ChatReply:
        if not rest or "=" not in rest:
            return ChatReply("error", "usage: /set KEY=VALUE ... (e.g. /set temperature=0.7 top_p=0.9)")
        changes: dict[str, Any] = {}
        for part in rest.split():
            key, _, raw = part.partition("=")
            key = key.strip().lstrip("-").replace("-", "_")
            if key == "stop":
                key = "stop_strings"
            if key not in DECODING_FLAGS:
                return ChatReply("error", f"unknown parameter {key!r}; one of: "
                                          + ", ".join(k for k in DECODING_FLAGS))
            changes[key] = _parse_value(raw, key)
        candidate = {**self.generator.user_params(), **self.overrides, **changes}
        try:
            gc = self.generator.generation_config(candidate, warn=False)
        except ConfigError as exc:
            return ChatReply("error", exc.message)
        self.overrides.update(changes)
        self.gc = gc
        return ChatReply("info", "  ".join(f"{k}={v}" for k, v in changes.items()))


def _parse_value(raw: str, key: str) -> Any:
    if key == "stop_strings":
        return [raw]
    low = raw.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
