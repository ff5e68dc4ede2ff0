"""The shared loader reads every supported source and says where a problem is."""

import json

import pytest

from llmkit.data.loading import load_table, read_text_column
from llmkit.errors import ConfigError, DataError

ROWS = [{"text": "first document", "label": 0}, {"text": "second one", "label": 1}]


@pytest.fixture
def sources(tmp_path):
    import datasets

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps(ROWS))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}))
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\nfirst document,0\nsecond one,1\n")
    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))
    txt = tmp_path / "d.txt"
    txt.write_text("first document\n\nsecond one\n")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    return {"jsonl": jsonl, "json": as_json, "wrapped": wrapped, "csv": csv, "parquet": parquet, "txt": txt,
            "saved": saved}


@pytest.mark.parametrize("kind", ["jsonl", "json", "wrapped", "csv", "parquet", "txt", "saved"])
def test_every_source_reads_the_same_texts(sources, kind):
    assert read_text_column(str(sources[kind]), "text") == ["first document", "second one"]
    table = load_table(str(sources[kind]))
    assert table["text"] == ["first document", "second one"]


def test_saved_dataset_dict_picks_train_or_the_named_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                               "test": datasets.Dataset.from_list(ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_table(str(tmp_path / "dd"))) == 2
    assert len(load_table(str(tmp_path / "dd"), split="test")) == 1
    with pytest.raises(ConfigError, match="no split 'dev'"):
        load_table(str(tmp_path / "dd"), split="dev")


def test_a_non_string_text_names_the_record(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": 5}\n')
    with pytest.raises(DataError, match="record 2: field 'text' is int"):
        read_text_column(str(path), "text")


def test_json_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(DataError, match=r"d.json:3: invalid JSON"):
        load_table(str(path))


def test_unsupported_extension_and_plain_directory(tmp_path):
    odd = tmp_path / "d.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_table(str(odd))
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="not a saved `datasets` dataset"):
        load_table(str(tmp_path / "dir"))


def test_hub_dataset_while_offline_fails_fast(monkeypatch):
    from llmkit.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load dataset 'someone/some-data'"):
        load_table("someone/some-data")
