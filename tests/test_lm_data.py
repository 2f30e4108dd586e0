import hashlib

import pytest
from datasets import Dataset, DatasetDict

from hf_initvar.experiments.lm_data import (
    Document,
    builtin_corpus,
    load_text_datasets,
    pack_into_blocks,
    split_documents,
    train_or_load_tokenizer,
)


@pytest.fixture(scope="module")
def docs_corpus():
    return builtin_corpus("python-docs")


@pytest.fixture
def tokenizer(docs_corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tokenizer-cache")
    return train_or_load_tokenizer([document.text for document in docs_corpus[:20]], 400, cache_root=cache)


def test_builtin_corpora_are_real_text(docs_corpus):
    import pydoc_data.topics

    assert len(docs_corpus) == len(pydoc_data.topics.topics)
    assert any("for_stmt" in document.name or "for" in document.name for document in docs_corpus)
    stdlib = builtin_corpus("python-stdlib")
    names = {document.name for document in stdlib}
    assert "stdlib/json/decoder.py" in names
    assert not any("/test/" in name or "site-packages" in name for name in names)
    assert sum(len(document.text) for document in stdlib) > 5_000_000


def test_unknown_corpus_is_rejected():
    with pytest.raises(ValueError, match="unknown corpus 'python'; choose one of python-stdlib, python-docs"):
        builtin_corpus("python")


def test_split_is_deterministic_and_disjoint(docs_corpus):
    first = split_documents(docs_corpus, 10.0)
    second = split_documents(list(reversed(docs_corpus)), 10.0)
    assert sorted(first["validation"]["text"]) == sorted(second["validation"]["text"])
    assert not set(first["train"]["text"]) & set(first["validation"]["text"])
    assert len(first["train"]) + len(first["validation"]) == len(docs_corpus)
    expected = sum(int(hashlib.sha1(d.name.encode()).hexdigest(), 16) % 10_000 < 1000 for d in docs_corpus)
    assert len(first["validation"]) == expected


def test_split_rejects_empty_side():
    with pytest.raises(ValueError, match="splitting 1 documents at 5.0% left"):
        split_documents([Document("only", "text")], 5.0)
    with pytest.raises(ValueError, match=r"must be in \(0, 100\), got 100"):
        split_documents([Document("only", "text")], 100)


def test_tokenizer_is_cached_not_retrained(docs_corpus, tmp_path, monkeypatch):
    texts = [document.text for document in docs_corpus[:10]]
    first = train_or_load_tokenizer(texts, 300, cache_root=tmp_path)
    folders = list((tmp_path / "tokenizers").iterdir())
    assert len(folders) == 1

    import tokenizers

    def fail(*args, **kwargs):
        raise AssertionError("the tokenizer was retrained")

    monkeypatch.setattr(tokenizers.ByteLevelBPETokenizer, "train_from_iterator", fail)
    second = train_or_load_tokenizer(texts, 300, cache_root=tmp_path)
    sample = docs_corpus[0].text[:500]
    assert second(sample)["input_ids"] == first(sample)["input_ids"]
    assert len(second) == 300
    assert second.eos_token == "<|endoftext|>"


def test_blocks_are_the_concatenated_documents(tokenizer):
    texts = ["def add(a, b):\n    return a + b\n", "The for statement iterates.", "x = [i * i for i in range(10)]"]
    raw = DatasetDict(train=Dataset.from_dict({"text": texts}), validation=Dataset.from_dict({"text": texts[:1]}))
    blocks = pack_into_blocks(raw, tokenizer, block_size=8)

    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    expected = [stream[start : start + 8] for start in range(0, len(stream) - len(stream) % 8, 8)]
    assert blocks["train"]["input_ids"] == expected
    assert blocks["train"]["labels"] == expected
    assert set(blocks["train"].column_names) == {"input_ids", "labels"}


def test_corpus_shorter_than_a_block_names_both_sizes(tokenizer):
    raw = DatasetDict(train=Dataset.from_dict({"text": ["tiny text"]}), validation=Dataset.from_dict({"text": ["x"]}))
    total = len(tokenizer("tiny text", add_special_tokens=False)["input_ids"]) + 1
    with pytest.raises(ValueError, match=f"the train split has {total} tokens, fewer than one block of 1024"):
        pack_into_blocks(raw, tokenizer, block_size=1024)


def test_local_text_files_get_a_validation_split(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(f"line {i} of real text" for i in range(200)))
    raw = load_text_datasets(train_file=str(train), validation_split_percentage=10)
    assert len(raw["validation"]) == 20
    assert raw["validation"][0]["text"] == "line 180 of real text"


def test_missing_and_unsupported_files_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_text_datasets(train_file=str(tmp_path / "nope.txt"))
    bad = tmp_path / "data.parquet"
    bad.write_text("")
    with pytest.raises(ValueError, match="extension 'parquet'; supported: txt, json, jsonl, csv"):
        load_text_datasets(train_file=str(bad))
