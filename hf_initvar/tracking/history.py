"""The on-disk variance history: a CSV of rows plus a JSON file of metadata.

Layout of a history folder (by default `<output_dir>/variance/`):

- `history.csv`: one row per (step, layer, projection, head) with the columns in `COLUMNS`.
  `head` is -1 for the statistics of the whole projection. Rows are appended after every logged
  step and flushed to disk, so a crash loses at most the step being written.
- `meta.json`: the layout (model type, layers, heads, head size), the logging interval, whether
  per-head rows are present, and the init scheme recorded on the model config, if any.

`load_history` reads a folder back into a `pandas.DataFrame`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HISTORY_FILE = "history.csv"
META_FILE = "meta.json"
FORMAT_VERSION = 1
COLUMNS = ("step", "layer", "projection", "head", "count", "variance", "std", "mean", "rms", "variance_ratio", "quantity")


class HistoryWriter:
    """Appends logged steps to `history.csv` in `directory`; writes `meta.json` once.

    Each append costs one formatted write of the step's rows and one flush, independent of how many
    steps came before.
    """

    def __init__(self, directory: str | os.PathLike, meta: dict[str, Any], resume_step: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / HISTORY_FILE
        _write_json_atomically(self.directory / META_FILE, {"format_version": FORMAT_VERSION, **meta})

        if resume_step is None or not self.path.exists():
            self._file = open(self.path, "w", newline="")
            csv.writer(self._file).writerow(COLUMNS)
        else:
            truncate_history(self.directory, resume_step)
            _upgrade_columns(self.path)
            self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        self.logged_steps = set(read_logged_steps(self.directory)) if resume_step is not None else set()

    def append(self, step: int, keys: list[tuple[int, str, int]], statistics: dict[str, np.ndarray], quantity: str = "weight") -> None:
        """Append the rows of one logged step and flush them to disk.

        `quantity` is `weight`, `gradient` or `update` (the weight change since the previous logged step).
        """
        # Python floats are written with repr, the shortest text that reads back to the same float.
        count = statistics["count"].astype(np.int64).tolist()
        ratio = statistics.get("variance_ratio")
        if ratio is None:
            ratio = np.full(len(keys), np.nan)
        columns = [statistics[name].tolist() for name in ("variance", "std", "mean", "rms")] + [ratio.tolist()]
        self._writer.writerows(
            (step, layer, projection, head, count[i], *(column[i] for column in columns), quantity)
            for i, (layer, projection, head) in enumerate(keys)
        )
        self._file.flush()
        self.logged_steps.add(step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def load_history(path: str | os.PathLike, quantity: str | None = "weight") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a history folder (or a training `output_dir` containing `variance/`).

    Args:
        path: the history folder or the training `output_dir`.
        quantity: keep only rows of this quantity (`weight`, `gradient`, `update`); None keeps
            every row. Rows of histories written before the `quantity` column are weight rows.

    Returns:
        The rows as a DataFrame with the columns of `COLUMNS`, and the metadata dict.

    Raises:
        FileNotFoundError: no `history.csv` at `path` or `path/variance`.
    """
    directory = find_history_dir(path)
    frame = pd.read_csv(directory / HISTORY_FILE, dtype={"projection": str, "quantity": str})
    if "quantity" not in frame.columns:
        frame["quantity"] = "weight"
    frame["quantity"] = frame["quantity"].fillna("weight")
    if quantity is not None:
        frame = frame[frame["quantity"] == quantity].reset_index(drop=True)
    meta = json.loads((directory / META_FILE).read_text())
    return frame, meta


def find_history_dir(path: str | os.PathLike) -> Path:
    """Return the folder holding `history.csv`: `path` itself or `path/variance`."""
    path = Path(path)
    for candidate in (path, path / "variance"):
        if (candidate / HISTORY_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"no variance history at {path}: expected {path / HISTORY_FILE} or {path / 'variance' / HISTORY_FILE}, "
        "which VarianceCallback writes during training"
    )


def read_logged_steps(directory: str | os.PathLike) -> list[int]:
    """Return the distinct steps present in a history, in file order."""
    path = Path(directory) / HISTORY_FILE
    if not path.exists():
        return []
    steps = pd.read_csv(path, usecols=["step"])["step"]
    return list(dict.fromkeys(steps.tolist()))


def truncate_history(directory: str | os.PathLike, last_step: int) -> None:
    """Drop every row whose step is after `last_step`, rewriting the file atomically."""
    path = Path(directory) / HISTORY_FILE
    frame = pd.read_csv(path, dtype={"projection": str})
    kept = frame[frame["step"] <= last_step]
    if len(kept) == len(frame):
        return
    temporary = path.with_suffix(".csv.tmp")
    kept.to_csv(temporary, index=False)
    os.replace(temporary, path)


def _upgrade_columns(path: Path) -> None:
    """Rewrite a history written with fewer columns so that appended rows line up with `COLUMNS`."""
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None or tuple(header) == COLUMNS:
        return
    frame = pd.read_csv(path, dtype={"projection": str}).reindex(columns=list(COLUMNS))
    temporary = path.with_suffix(".csv.tmp")
    frame.to_csv(temporary, index=False)
    os.replace(temporary, path)


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
