"""Why `--streaming` reads local parquet itself (issue #17): peak RSS of reading the texts of data_scale.py's 200M
corpus (361 MB, 114 row groups of 2,000 documents) in a loop, with nothing else going on, by each reader.

    .venv/bin/python benchmarks/parquet_stream_rss.py [--size 200] [--documents 200000]

Each reader runs in a fresh process; "start" is its RSS after the first document, "peak" its ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from data_scale import WORK

READERS = {
    "datasets' parquet builder, streaming=True":
        "import datasets\n"
        "texts = (r['text'] for r in datasets.load_dataset('parquet', data_files=[PATH], split='train',"
        " streaming=True))",
    "pyarrow ParquetFile.iter_batches":
        "import pyarrow.parquet as pq\n"
        "texts = (t for b in pq.ParquetFile(PATH).iter_batches(batch_size=2000, columns=['text'])"
        " for t in b.column(0).to_pylist())",
    "llmkit.data.streaming.open_stream (read_row_group, pool released)":
        "from llmkit.data.streaming import open_stream\n"
        "texts = (r['text'] for r in open_stream(PATH, 'text'))",
}

PROBE = """
import json, os, resource
PATH = {path!r}
{reader}
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e6
start = None
for i, text in enumerate(texts):
    if start is None:
        start = rss()
    if i + 1 >= {documents}:
        break
print(json.dumps({{"documents": i + 1, "start_mb": start,
                   "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}), flush=True)
os._exit(0)   # the streams' reader threads are left running
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=200, help="corpus, millions of tokens (data_scale.py's)")
    parser.add_argument("--documents", type=int, default=200_000)
    args = parser.parse_args()
    path = WORK / f"corpus-{args.size}M.parquet"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/data_scale.py --sizes {args.size} first")
    print(f"| reader | documents | RSS after the first (MB) | peak RSS (MB) |\n|---|---:|---:|---:|")
    for label, reader in READERS.items():
        script = PROBE.format(path=str(path), reader=reader, documents=args.documents)
        result = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                           check=True).stdout.splitlines()[-1])
        print(f"| {label} | {result['documents']:,} | {result['start_mb']:,.0f} | {result['peak_mb']:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
