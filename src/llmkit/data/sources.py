"""`--data` specs: one source, or a mix of weighted sources, and the mix they make.

A spec is a comma-separated list of sources (`a.jsonl,b.parquet`), each optionally weighted by a last `:`-part that
parses as a number (`a.jsonl:0.7,org/name:0.3`); a hub source may name a config and split (`org/name:config:split`,
`org/name::split`). A light module: `datasets` is imported only inside `mix`; llmkit.data.loading.load_mixed
loads a spec's sources and mixes them.

Mixing: without weights the sources are concatenated (every row once, in order). With weights they are interleaved
by `datasets.interleave_datasets(probabilities=weights, stopping_strategy="all_exhausted")`: each row is drawn from a
source chosen at random with its weight's share, until every row of every source has been drawn at least once; a
source that runs out starts again (it is repeated, never cut short), so the shares follow the weights and no row is
left unused. The realised mix (rows drawn and share per source) is returned for the run to report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import ConfigError, DataError

PROVENANCE = "__llmkit_source"   # a column that records each mixed row's source while the mix is counted
MIX_STRATEGY = "all_exhausted"
# a last `:`-part that starts like a number is meant as a weight, even when it does not parse as one ("0.3x", "-1")
_NUMBERISH = re.compile(r"[-+]?(\d|\.\d)")
GLOB_CHARS = re.compile(r"[*?\[]")
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
              ".txt": "txt", ".text": "txt", ".md": "txt"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}    # on a text file: x.jsonl.gz, x.json.gz, x.jsonl.zst


def file_kind(path: Path) -> str | None:
    """jsonl, json, csv, parquet or txt from a file's name (a compression suffix looked through), else None."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        kind = FILE_KINDS.get(suffixes[-2]) if len(suffixes) > 1 else None
        return kind if kind != "parquet" else None   # parquet compresses inside the file
    return FILE_KINDS.get(suffixes[-1]) if suffixes else None


def has_data_suffix(name: str) -> bool:
    return file_kind(Path(name)) is not None


@dataclass(frozen=True)
class Source:
    name: str                  # the source as written, its weight removed
    weight: float | None = None


def _weight(text: str, item: str, flag: str) -> float | None:
    """The weight that `text` (an item's last `:`-part) gives, or None when it is not meant as one."""
    try:
        value = float(text)
    except ValueError:
        if _NUMBERISH.match(text.strip()):
            raise ConfigError(f"{flag}: the weight {text!r} of {item!r} is not a number",
                              hint=f"write weights as numbers, e.g. {flag} a.jsonl:0.7,b.jsonl:0.3") from None
        return None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{flag}: the weight of {item!r} must be a finite number greater than 0 (got {text})",
                          hint=f"e.g. {flag} a.jsonl:0.7,b.jsonl:0.3 (weights are normalised to shares)")
    return value


def _is_local_file_name(name: str) -> bool:
    from llmkit.hub import looks_like_local_path

    return looks_like_local_path(name) or has_data_suffix(name)


def parse_spec(text: str, flag: str = "--data") -> list[Source]:
    """The sources of a spec; a ConfigError for a weight that does not parse, is not > 0, or is given to only some
    sources."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ConfigError(f"{flag} {text!r} has an empty source", hint="separate sources with single commas")
    sources = []
    for item in items:
        if Path(item).expanduser().exists() or ":" not in item:
            sources.append(Source(item))
            continue
        head, last = item.rsplit(":", 1)
        weight = _weight(last, item, flag)
        if weight is None and _is_local_file_name(head):
            raise ConfigError(f"{flag}: {item!r}: {last!r} is not a weight, and a local file has no config or split",
                              hint=f"weight a source with a number, e.g. {flag} {head}:0.5")
        sources.append(Source(head if weight is not None else item, weight))
    weighted = [s for s in sources if s.weight is not None]
    if weighted and len(weighted) != len(sources):
        unweighted = ", ".join(s.name for s in sources if s.weight is None)
        raise ConfigError(f"{flag}: some sources have a weight and others ({unweighted}) do not",
                          hint="give every source of a mix a weight, or none (then they are concatenated)")
    return sources


def spec_problems(text: str | None, flag: str) -> list[str]:
    """What is wrong with a spec, for a config's collected problems."""
    if not text:
        return []
    try:
        parse_spec(text, flag)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def eval_spec_problems(text: str | None, flag: str = "--eval-data") -> list[str]:
    """What is wrong with an --eval-data spec: each of its sources is evaluated on its own, so none has a weight."""
    problems = spec_problems(text, flag)
    if text and not problems and any(s.weight is not None for s in parse_spec(text, flag)):
        problems.append(f"{flag}: each source is evaluated on its own (eval_<name>_loss), so weights do not apply; "
                        f"list the sources without them, e.g. {flag} a.jsonl,b.jsonl")
    return problems


def is_hub_name(name: str) -> bool:
    """A source that names a hub dataset (`org/name`, `name:config:split`): not a local path, file name or glob."""
    return not (_is_local_file_name(name.partition(":")[0]) or GLOB_CHARS.search(name))


def revision_problems(revision: str | None, *specs: str | None) -> list[str]:
    """--data-revision is a hub dataset's branch, tag or commit: refused when no source of `specs` is a hub dataset
    (a local file has no revision; silently ignoring it would hide a wrong --data)."""
    if revision is None:
        return []
    try:
        names = [s.name for spec in specs if spec for s in parse_spec(spec)]
    except ConfigError:   # spec_problems reports it
        return []
    if not names or any(is_hub_name(n) for n in names):
        return []
    return [f"--data-revision {revision} applies to hub datasets, and every source is local "
            f"({', '.join(names)})"]


def eval_names(sources: list[Source]) -> list[str]:
    """Each eval source's name in the metrics (eval_<name>_loss): its file or directory name without data suffixes
    (a glob: the directory it is in; a hub dataset: its name, config and split), characters other than letters,
    digits, - and _ made _, a repeated name numbered (train, train_2)."""
    names: list[str] = []
    for source in sources:
        path = Path(source.name.rstrip("/"))
        if GLOB_CHARS.search(path.name):
            path = path.parent
        stem = path.name
        while Path(stem).suffix.lower() in {*FILE_KINDS, *COMPRESSIONS}:
            stem = Path(stem).stem
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "eval"
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}_{n}"
        names.append(name)
    return names


def is_mix(text: str) -> bool:
    sources = parse_spec(text)
    return len(sources) > 1 or sources[0].weight is not None


@dataclass
class SourceShare:
    source: str
    weight: float | None      # as given; None when the sources are concatenated
    rows: int                 # rows the source holds
    drawn: int                # rows of the mix that come from it (more than `rows` when it was repeated)
    share: float              # drawn / rows of the mix

    @property
    def passes(self) -> float:
        return self.drawn / self.rows if self.rows else 0.0


@dataclass
class Mixed:
    table: object             # datasets.Dataset
    sources: list[SourceShare]
    strategy: str             # "concatenate" or the interleave stopping strategy
    dropped_columns: dict[str, list[str]] = field(default_factory=dict)   # source -> columns others lack
    row_sources: object = None   # numpy int array: the index (into `sources`) of each row's source

    def realised(self) -> list[dict]:
        return [{"source": s.source, "weight": s.weight, "rows": s.rows, "drawn": s.drawn,
                 "share": round(s.share, 6), "passes": round(s.passes, 4)} for s in self.sources]

    def training_shares(self, rows, tokens) -> list[dict]:
        """The mix training sees, per source: {source, weight, rows, tokens, share_of_tokens} of the training rows
        (documents, examples) made of the mix's rows `rows`, holding `tokens` tokens each (a row may make none:
        an empty document, a dropped conversation; or several: --multi-turn expand)."""
        import numpy as np

        of_source = np.asarray(self.row_sources)[np.asarray(rows, dtype=np.int64)]
        count = np.bincount(of_source, minlength=len(self.sources))
        held = np.bincount(of_source, weights=np.asarray(tokens, dtype=np.float64), minlength=len(self.sources))
        total = float(held.sum())
        return [{"source": s.source, "weight": s.weight, "rows": int(count[k]), "tokens": int(held[k]),
                 "share_of_tokens": round(float(held[k]) / total, 6) if total else 0.0}
                for k, s in enumerate(self.sources)]


def _common_columns(tables: list, names: list[str]) -> tuple[list, dict[str, list[str]]]:
    """The tables cut to the columns all of them have (a mix is one table); which columns each lost."""
    common = [c for c in tables[0].column_names if all(c in t.column_names for t in tables[1:])]
    if not common:
        described = "; ".join(f"{n}: {', '.join(t.column_names)}" for n, t in zip(names, tables))
        raise DataError(f"the sources of the mix share no column ({described})",
                        hint="mix sources of one format (the same text field or conversation columns)")
    dropped = {n: [c for c in t.column_names if c not in common] for n, t in zip(names, tables)}
    tables = [t.select_columns(common) for t in tables]
    for n, t in zip(names[1:], tables[1:]):
        if t.features != tables[0].features:
            differ = [c for c in common if t.features[c] != tables[0].features[c]]
            raise DataError(f"the sources of the mix disagree on the type of column(s) {', '.join(differ)}: "
                            f"{names[0]} has {', '.join(str(tables[0].features[c]) for c in differ)}, "
                            f"{n} has {', '.join(str(t.features[c]) for c in differ)}",
                            hint="convert the sources to one schema before mixing them")
    return tables, {n: cols for n, cols in dropped.items() if cols}


def mix(tables: list, weights: list[float] | None, seed: int, names: list[str]) -> Mixed:
    """One table from several: concatenated without weights, else interleaved by weight (see the module doc)."""
    import datasets
    import numpy as np

    for name, table in zip(names, tables):
        if len(table) == 0:
            raise DataError(f"{name}, a source of the mix, holds no records",
                            hint="remove it from --data or give it some records")
    tables, dropped = _common_columns(tables, names)
    tagged = [t.add_column(PROVENANCE, [k] * len(t)) for k, t in enumerate(tables)]
    if weights is None:
        mixed, strategy = datasets.concatenate_datasets(tagged), "concatenate"
    else:
        total = sum(weights)
        mixed = datasets.interleave_datasets(tagged, probabilities=[w / total for w in weights], seed=seed,
                                             stopping_strategy=MIX_STRATEGY)
        strategy = MIX_STRATEGY
    row_sources = np.asarray(mixed[PROVENANCE], dtype=np.int64)
    drawn = np.bincount(row_sources, minlength=len(tables))
    shares = [SourceShare(source=name, weight=None if weights is None else weights[k], rows=len(tables[k]),
                          drawn=int(drawn[k]), share=float(drawn[k]) / len(mixed))
              for k, name in enumerate(names)]
    return Mixed(table=mixed.remove_columns(PROVENANCE), sources=shares, strategy=strategy, dropped_columns=dropped,
                 row_sources=row_sources)
