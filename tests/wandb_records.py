"""Read the history records of an offline W&B run (`run-*.wandb`), for tests.

The file is a LevelDB-style log: a 7-byte header (`:W&B`, magic, version), then 32 KiB blocks of
records, each with a 7-byte header (CRC32, length, type) and a payload that is one chunk of a
serialized `wandb_internal_pb2.Record`. Records longer than a block's remainder are split into
FIRST/MIDDLE/LAST chunks. wandb 0.31 ships no Python reader for this format.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK_SIZE = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_history(path: str | Path) -> list[dict]:
    """Return one dict per `history` record of the run file, keys as logged."""
    rows = []
    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def _payloads(data: bytes):
    ident, _magic, _version = FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B":
        raise ValueError(f"not a W&B run file: header {ident!r}")
    offset = FILE_HEADER.size
    pending = b""
    while offset + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - offset % BLOCK_SIZE
        if left_in_block < RECORD_HEADER.size:  # block trailer: zero padding
            offset += left_in_block
            continue
        _checksum, length, kind = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        chunk = data[offset : offset + length]
        offset += length
        if kind == 0 and length == 0:
            offset += BLOCK_SIZE - offset % BLOCK_SIZE if offset % BLOCK_SIZE else 0
            continue
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
