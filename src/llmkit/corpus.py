"""The embedded default corpus: the Python language reference that ships with Python (`pydoc_data.topics`).

No network, no hub: every install of Python has it, so the quickstart and the tests always have real English text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def topics() -> dict[str, str]:
    from pydoc_data.topics import topics as pydoc_topics

    return dict(sorted(pydoc_topics.items()))


def paragraphs(text: str) -> list[str]:
    parts = re.split(r"\n\s*\n", text)
    return [" ".join(line.strip() for line in p.strip().splitlines()) for p in parts if p.strip()]


def documents(held_out_every: int = 10) -> tuple[list[dict], list[dict]]:
    """(train, held_out) records `{"topic", "text"}`, one per paragraph; every n-th topic is held out whole."""
    train, held_out = [], []
    for index, (name, text) in enumerate(topics().items()):
        target = held_out if held_out_every and index % held_out_every == held_out_every - 1 else train
        target.extend({"topic": name, "text": p} for p in paragraphs(text))
    return train, held_out


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def first_sentence(text: str) -> str:
    """The first sentence of a paragraph; a sentence that introduces a grammar rule ends with '.' instead of ':'."""
    sentence = re.split(r"(?<=[.:])\s", text.strip())[0]
    return sentence[:-1] + "." if sentence.endswith(":") else sentence


def qa_pairs() -> list[dict]:
    """Question/answer pairs from the reference's statement topics, for `llmkit sft`: "What does the `for`
    statement do?" -> the first sentence of that topic's first paragraph that names the statement."""
    pairs, seen = [], set()
    for text in topics().values():
        parts = paragraphs(text)
        match = re.match(r'The "(\w+)" statement \*+$', parts[0]) if parts else None
        if match is None or match.group(1) in seen:
            continue
        name = match.group(1)
        answer = next((first_sentence(p) for p in parts[1:] if "::=" not in p
                       and (f'"{name}"' in p or name.capitalize() in p) and len(first_sentence(p).split()) >= 5),
                      None)
        if answer is None:
            continue
        seen.add(name)
        pairs.append({"topic": name, "question": f"What does the `{name}` statement do?", "answer": answer})
    return pairs
