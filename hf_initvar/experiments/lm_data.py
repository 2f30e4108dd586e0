"""Text for language-model pretraining: corpora, a cached byte-level BPE tokenizer, packed blocks.

With no data flags the corpus is real text that every Python installation carries: the help
topics of `pydoc_data.topics` (English prose about the language) and the source files of the
standard library. Each topic or file is one document. A document goes to validation when the
SHA-1 of its name falls in the validation share, so the split is the same on every run for a given
Python version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "python-stdlib"
CORPORA = ("python-stdlib", "python-docs")
END_OF_TEXT = "<|endoftext|>"
TOKENIZER_CACHE_ENV = "HF_INITVAR_CACHE"

# Folders of the standard library left out of the default corpus: test suites repeat generated
# data, and site-packages is whatever the user installed, not the standard library.
_EXCLUDED_STDLIB_PARTS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}


@dataclass(frozen=True)
class Document:
    """One unit of the built-in corpus: a help topic or a source file."""

    name: str
    text: str


def builtin_corpus(name: str = DEFAULT_CORPUS) -> list[Document]:
    """Return the documents of a built-in corpus, sorted by name.

    Args:
        name: `python-docs` (the `pydoc_data` help topics, about 0.5 MB) or `python-stdlib`
            (those topics plus the standard library's `.py` files, about 12 MB on Python 3.11).

    Raises:
        ValueError: unknown corpus name.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")

    import pydoc_data.topics

    documents = [Document(f"pydoc/{topic}", text) for topic, text in pydoc_data.topics.topics.items()]
    if name == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        for path in root.rglob("*.py"):
            relative = path.relative_to(root)
            if _EXCLUDED_STDLIB_PARTS.intersection(relative.parts):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                documents.append(Document(f"stdlib/{relative.as_posix()}", text))
    return sorted(documents, key=lambda document: document.name)


def split_documents(documents: list[Document], validation_percentage: float) -> DatasetDict:
    """Split documents into `train` and `validation` by a hash of their names (deterministic).

    Raises:
        ValueError: the percentage is outside (0, 100), or one side of the split is empty.
    """
    if not 0 < validation_percentage < 100:
        raise ValueError(f"validation_split_percentage must be in (0, 100), got {validation_percentage}")
    train, validation = [], []
    for document in documents:
        bucket = int(hashlib.sha1(document.name.encode()).hexdigest(), 16) % 10_000
        (validation if bucket < validation_percentage * 100 else train).append(document.text)
    if not train or not validation:
        raise ValueError(
            f"splitting {len(documents)} documents at {validation_percentage}% left "
            f"{len(train)} for training and {len(validation)} for validation; both need at least one"
        )
    return DatasetDict(train=Dataset.from_dict({"text": train}), validation=Dataset.from_dict({"text": validation}))


def load_text_datasets(
    corpus: str = DEFAULT_CORPUS,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    validation_split_percentage: float = 5.0,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Load `train` and `validation` text splits with a `text` column.

    Sources, first match wins: a `datasets` name (Hub or local script), local files
    (`.txt`, `.json`/`.jsonl`, `.csv`), or a built-in corpus. A source without a validation split
    gets one from the last `validation_split_percentage` percent of its training split.
    """
    if dataset_name is not None:
        raw = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    elif train_file is not None:
        raw = _load_files(train_file, validation_file, cache_dir)
    else:
        return split_documents(builtin_corpus(corpus), validation_split_percentage)

    if "validation" not in raw:
        percent = int(validation_split_percentage)
        if percent < 1:
            raise ValueError(f"validation_split_percentage must be at least 1 here, got {validation_split_percentage}")
        if dataset_name is not None:
            raw["validation"] = load_dataset(dataset_name, dataset_config_name, split=f"train[:{percent}%]", cache_dir=cache_dir)
            raw["train"] = load_dataset(dataset_name, dataset_config_name, split=f"train[{percent}%:]", cache_dir=cache_dir)
        else:
            split = raw["train"].train_test_split(test_size=percent / 100, shuffle=False)
            raw = DatasetDict(train=split["train"], validation=split["test"])
    return raw


def _load_files(train_file: str, validation_file: str | None, cache_dir: str | None) -> DatasetDict:
    extension = Path(train_file).suffix.lstrip(".")
    builders = {"txt": "text", "json": "json", "jsonl": "json", "csv": "csv"}
    if extension not in builders:
        raise ValueError(f"train_file {train_file!r} has extension {extension!r}; supported: {', '.join(builders)}")
    for path in filter(None, (train_file, validation_file)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"data file not found: {path}")
    data_files = {"train": train_file}
    if validation_file is not None:
        data_files["validation"] = validation_file
    return load_dataset(builders[extension], data_files=data_files, cache_dir=cache_dir)


def text_column(dataset: Dataset) -> str:
    """Return the column to tokenize: `text` when present, else the first string column."""
    if "text" in dataset.column_names:
        return "text"
    for name, feature in dataset.features.items():
        if getattr(feature, "dtype", None) == "string":
            return name
    raise ValueError(f"no text column in dataset with columns {dataset.column_names}")


def train_or_load_tokenizer(
    texts: Iterable[str], vocab_size: int, cache_root: str | os.PathLike | None = None
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer on `texts`, or load it from the cache if it exists.

    The cache key is a SHA-256 of the training texts, the vocabulary size and the `tokenizers`
    version, so a rerun on the same corpus loads the tokenizer instead of retraining it.

    Returns:
        A `transformers` fast tokenizer whose BOS, EOS and UNK token is `<|endoftext|>`.
    """
    import tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes plus {END_OF_TEXT}), got {vocab_size}")
    texts = list(texts)
    digest = hashlib.sha256(f"{vocab_size}|{tokenizers.__version__}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", errors="replace"))
        digest.update(b"\0")
    cache = Path(cache_root or os.environ.get(TOKENIZER_CACHE_ENV) or Path.home() / ".cache" / "hf_initvar") / "tokenizers"
    folder = cache / f"bpe-{vocab_size}-{digest.hexdigest()[:16]}"
    if (folder / "tokenizer.json").is_file():
        logger.info("Loading the cached tokenizer from %s", folder)
        return AutoTokenizer.from_pretrained(folder)

    logger.info("Training a byte-level BPE tokenizer (vocab %d) on %d documents", vocab_size, len(texts))
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )
    # Write to a temporary folder and rename it, so a crash or a second process never reads half a tokenizer.
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    tokenizer.save_pretrained(staging)
    if folder.exists():
        shutil.rmtree(staging)
    else:
        staging.replace(folder)
    return AutoTokenizer.from_pretrained(folder)


def pack_into_blocks(raw: DatasetDict, tokenizer: PreTrainedTokenizerBase, block_size: int, num_proc: int | None = None) -> DatasetDict:
    """Tokenize every split, append EOS to each document, concatenate and cut into `block_size` blocks.

    Blocks have `input_ids` and `labels` (the same ids; the model shifts them), no padding and no
    attention mask, so no pad token is needed. The tail shorter than one block is dropped.

    Raises:
        ValueError: a split yields fewer tokens than one block; the message names both sizes.
    """
    column = text_column(raw["train"])
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        encoded = tokenizer(batch[column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [ids + [eos] for ids in encoded]}

    tokenized = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=raw["train"].column_names, desc="Tokenizing")
    for split, dataset in tokenized.items():
        total = sum(len(ids) for ids in dataset["input_ids"])
        if total < block_size:
            raise ValueError(
                f"the {split} split has {total} tokens, fewer than one block of {block_size}; "
                f"use more text or a smaller --block_size (at most {total})"
            )

    def group(batch):
        ids = [token for document in batch["input_ids"] for token in document]
        usable = len(ids) - len(ids) % block_size
        blocks = [ids[start : start + block_size] for start in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    # Each batch of 1,000 documents drops its own tail of fewer than `block_size` tokens.
    packed = tokenized.map(group, batched=True, batch_size=1000, num_proc=num_proc, desc=f"Packing into blocks of {block_size}")
    for split, dataset in packed.items():
        if len(dataset) == 0:
            raise ValueError(f"the {split} split packed into no block of {block_size} tokens; use a smaller --block_size")
    return packed
