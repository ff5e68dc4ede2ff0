"""Every shape of --data: compressed files, shard directories and globs, hub configs and splits from the cache,
mixes; and the bad inputs each can bring. References are computed here with gzip, zstandard, pyarrow and by
counting, never by llmkit."""

import glob as globmod
import gzip
import json
import os
import re

import pytest

from llmkit.data import loading
from llmkit.data.loading import load_mixed, load_table, read_text_column
from llmkit.data.sources import mix, parse_spec
from llmkit.errors import ConfigError, DataError


def _jsonl_bytes(rows) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _write(path, rows, compression=None):
    import zstandard

    data = _jsonl_bytes(rows) if path.name.split(".")[1] == "jsonl" else json.dumps(rows).encode()
    if compression == "gz":
        data = gzip.compress(data)
    elif compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`datasets` writes what its builders prepare under this test's tmp dir."""
    import datasets

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


ROWS = [{"text": f"document {i} " + "word " * i, "n": i} for i in range(7)]


@pytest.mark.parametrize("name,compression", [("d.jsonl.gz", "gz"), ("d.json.gz", "gz"), ("d.jsonl.zst", "zst")])
def test_compressed_files_read_as_their_decompressed_lines(tmp_path, name, compression):
    import zstandard

    path = _write(tmp_path / name, ROWS, compression)
    raw = path.read_bytes()
    plain = gzip.decompress(raw) if compression == "gz" else zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    expected = [json.loads(line) for line in plain.decode().splitlines()] if ".jsonl" in name else json.loads(plain)
    assert read_text_column(str(path)) == [r["text"] for r in expected]
    assert load_table(str(path)).to_list() == expected


def test_a_directory_and_a_glob_of_parquet_shards_read_every_shard_in_order(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        datasets.Dataset.from_list(ROWS[k * 3:(k + 1) * 3]).to_parquet(str(shards / f"train-{k:05d}.parquet"))
    expected = [row for f in sorted(globmod.glob(str(shards / "*.parquet"))) for row in pq.read_table(f).to_pylist()]
    assert load_table(str(shards)).to_list() == expected
    assert load_table(str(shards / "train-*.parquet")).to_list() == expected
    assert load_table(str(shards / "train-0000[01].parquet")).to_list() == expected[:6]


def test_a_glob_of_compressed_jsonl_shards(tmp_path):
    _write(tmp_path / "part-0.jsonl.gz", ROWS[:4], "gz")
    _write(tmp_path / "part-1.jsonl.gz", ROWS[4:], "gz")
    expected = [json.loads(line) for f in sorted(tmp_path.glob("part-*.jsonl.gz"))
                for line in gzip.decompress(f.read_bytes()).decode().splitlines()]
    assert read_text_column(str(tmp_path / "part-*.jsonl.gz")) == [r["text"] for r in expected]


# ------------------------------------------------------------------------------------------------ bad shapes

def test_a_corrupt_shard_is_named(tmp_path):
    _write(tmp_path / "a.jsonl.gz", ROWS, "gz")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(ROWS))[:-8])
    with pytest.raises(DataError, match=r"b\.jsonl\.gz is not a valid gzip file"):
        load_table(str(tmp_path / "*.gz"))


def test_a_bad_line_in_a_compressed_shard_is_named_by_its_number(tmp_path):
    _write(tmp_path / "a.jsonl.gz", ROWS, "gz")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x", "n": 1}\n{"text": }\n'))
    with pytest.raises(DataError, match=r"b\.jsonl\.gz:2: invalid JSON"):
        load_table(str(tmp_path / "*.jsonl.gz"))


def test_a_truncated_zstd_file(tmp_path):
    import zstandard

    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(ROWS))[:12])
    with pytest.raises(DataError, match="not a valid zstd file: the file ends inside a zstd frame"):
        read_text_column(str(path))


def test_shards_with_different_columns_or_types_are_named(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _write(shards / "a.jsonl", ROWS)
    _write(shards / "b.jsonl", [{"text": "x", "m": 1}])
    with pytest.raises(DataError, match=r"do not share one schema: a\.jsonl has \(text: string, n: int64\); "
                                        r"b\.jsonl lacks n, adds m"):
        load_table(str(shards))
    os.remove(shards / "b.jsonl")
    _write(shards / "c.jsonl", [{"text": "x", "n": "seven"}])
    with pytest.raises(DataError, match=r"c\.jsonl types n \(string, not int64\)"):
        load_table(str(shards))


def test_a_glob_that_matches_nothing(tmp_path):
    with pytest.raises(DataError, match=r"data/\*\.parquet matches no file"):
        load_table(str(tmp_path / "data" / "*.parquet"))


# ------------------------------------------------------------------------------------------------------ hub

@pytest.fixture
def cached_hub_dataset(tmp_path, datasets_cache):
    """org/corpus with configs en and fr (splits train, test), as `datasets` leaves it in its cache after a
    download: prepared Arrow files under org___corpus/<config>/<version>/<commit>."""
    from datasets.packaged_modules.json.json import Json

    files = {"train": str(_write(tmp_path / "train.jsonl", ROWS[:5])),
             "test": str(_write(tmp_path / "test.jsonl", ROWS[5:]))}
    for config in ("en", "fr"):
        Json(data_files=files, dataset_name="corpus", config_name=config, hash="0123abcd",
             cache_dir=str(datasets_cache)).download_and_prepare()
    for entry in (datasets_cache / "corpus").iterdir():   # a hub download's config dir has no data-files suffix
        entry.rename(entry.with_name(re.sub(r"-[0-9a-f]+$", "", entry.name)))
    (datasets_cache / "corpus").rename(datasets_cache / "org___corpus")
    return ROWS


def test_a_cached_hub_dataset_loads_by_config_and_split_without_a_probe(cached_hub_dataset, monkeypatch, tmp_path):
    cached_hub_dataset_dir = tmp_path   # stands for a local tokenizer dir: only the data is checked here

    def no_probe(*args):
        raise AssertionError("a cached dataset must load without probing the hub")

    monkeypatch.setattr(loading, "require_hub", no_probe)
    assert load_table("org/corpus:en:test").to_list() == cached_hub_dataset[5:]
    assert load_table("org/corpus:fr").to_list() == cached_hub_dataset[:5]   # train by default
    from llmkit.config import TokenizeDatasetConfig
    from llmkit.preflight import check_sources

    check_sources(TokenizeDatasetConfig(tokenizer=str(cached_hub_dataset_dir), data="org/corpus:en:test:0.5,org/corpus:fr:train:0.5"))


@pytest.mark.parametrize("spec,message", [
    ("org/corpus:de:train", r"config 'de'.*en.*fr"),
    ("org/corpus:en:dev", r'Unknown split "dev"'),
    ("org/corpus::test", r"multiple 'org/corpus' configurations"),
])
def test_an_unknown_config_or_split_is_a_config_error(cached_hub_dataset, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_table(spec)


def test_an_uncached_hub_dataset_offline_fails_at_once_naming_the_dataset(monkeypatch):
    from llmkit.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load dataset 'someone/data'"):
        load_table("someone/data:main:train")


def test_data_revision_reaches_datasets(cached_hub_dataset, monkeypatch):
    import datasets

    seen = {}

    def load_dataset(name, config, split=None, revision=None):
        seen.update(name=name, config=config, split=split, revision=revision)
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    load_table("org/corpus:en:test", revision="v1.0")
    assert seen == {"name": "org/corpus", "config": "en", "split": "test", "revision": "v1.0"}


# ---------------------------------------------------------------------------------------------------- mixing

def test_spec_parsing():
    assert [(s.name, s.weight) for s in parse_spec("a.jsonl,b.parquet")] == [("a.jsonl", None), ("b.parquet", None)]
    assert [(s.name, s.weight) for s in parse_spec("a.jsonl:0.7,org/name:en:train:3")] == \
        [("a.jsonl", 0.7), ("org/name:en:train", 3.0)]
    assert [(s.name, s.weight) for s in parse_spec("org/name::test")] == [("org/name::test", None)]


@pytest.mark.parametrize("spec,message", [
    ("a.jsonl:-0.5,b.jsonl:1", "greater than 0"), ("a.jsonl:0,b.jsonl:1", "greater than 0"),
    ("a.jsonl:nan,b.jsonl:1", "finite"), ("a.jsonl:inf", "finite"), ("a.jsonl:0.3x,b.jsonl:1", "not a number"),
    ("a.jsonl:heavy", "not a weight"), ("a.jsonl:1,b.jsonl", "others"), ("a.jsonl,,b.jsonl", "empty source"),
])
def test_a_bad_weight_is_a_config_error_when_the_config_is_built(spec, message):
    from llmkit.config import PretrainConfig

    with pytest.raises(ConfigError, match=message):
        PretrainConfig(model="m", output_dir="o", data=spec)


def test_the_realised_mix_is_what_the_mixed_rows_show(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(30)])
    b = _write(tmp_path / "b.jsonl.gz", [{"text": f"b{i}"} for i in range(6)], "gz")
    mixed = load_mixed(f"{a}:0.75,{b}:0.25", seed=3)
    texts = mixed.table["text"]
    counted = {"a": sum(t.startswith("a") for t in texts), "b": sum(t.startswith("b") for t in texts)}
    assert [s.drawn for s in mixed.sources] == [counted["a"], counted["b"]]
    assert [s.share for s in mixed.sources] == [counted["a"] / len(texts), counted["b"] / len(texts)]
    assert {f"a{i}" for i in range(30)} <= set(texts) and {f"b{i}" for i in range(6)} <= set(texts)  # none left out
    assert abs(counted["a"] / len(texts) - 0.75) < 0.15
    assert mixed.table["text"] == load_mixed(f"{a}:0.75,{b}:0.25", seed=3).table["text"]   # seeded


def test_unweighted_sources_are_concatenated(tmp_path):
    a = _write(tmp_path / "a.jsonl", ROWS[:3])
    b = _write(tmp_path / "b.jsonl", ROWS[3:])
    assert load_table(f"{a},{b}").to_list() == ROWS
    assert read_text_column(f"{a},{b}") == [r["text"] for r in ROWS]


def test_an_empty_source_in_a_mix_is_named(tmp_path):
    import datasets

    a = _write(tmp_path / "a.jsonl", ROWS)
    with pytest.raises(DataError, match=r"hub/empty, a source of the mix, holds no records"):
        mix([load_table(str(a)), datasets.Dataset.from_dict({"text": [], "n": []})], [1.0, 1.0], 0,
            [str(a), "hub/empty"])
    (tmp_path / "blank.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"blank\.jsonl is empty"):
        load_table(f"{a},{tmp_path / 'blank.jsonl'}")


def test_preflight_checks_every_source_of_a_mix(tmp_path):
    from llmkit.config import PretrainConfig
    from llmkit.preflight import check_sources

    a = _write(tmp_path / "a.jsonl", ROWS)
    check_sources(PretrainConfig(model=str(tmp_path), output_dir="o", data=f"{a}:0.5,{tmp_path}/*.jsonl:0.5"))
    with pytest.raises(DataError, match=r"no such file or directory: .*missing\.jsonl\.gz"):
        check_sources(PretrainConfig(model=str(tmp_path), output_dir="o", data=f"{a}:0.5,{tmp_path}/missing.jsonl.gz:0.5"))
    with pytest.raises(DataError, match=r"\*\.parquet matches no file"):
        check_sources(PretrainConfig(model=str(tmp_path), output_dir="o", data=f"{a},{tmp_path}/*.parquet"))
