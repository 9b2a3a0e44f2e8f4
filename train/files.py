"""Atomic file writes: a reader (or a ``kill -9``) never sees half a file.

Checkpoints, the decoded-data cache, ``summary.json``, ``metrics.jsonl`` rewrites and the sweep leaderboard are all
written by :func:`atomic_write`: a temporary file in the same folder, fsync, then a rename over the target. The files
of one epoch (``best.pt``, ``last.pt``, ``metrics.jsonl``) go through :func:`atomic_write_all`: all or none.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TMP_SUFFIX", "atomic_write", "atomic_write_all", "remove_stale_temporaries", "shortest_floats",
           "write_json"]

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: done once, at import, before any thread runs
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_read_umask()


def atomic_write(path: str | os.PathLike, data: bytes | memoryview | str) -> None:
    """Write ``data`` to ``path`` atomically: a hidden temporary file beside it, fsync, then a rename.

    Args:
        path: The file to create or replace.
        data: The bytes or text to write (serialize first, e.g. ``torch.save`` into ``io.BytesIO``: a writer that
            fails half-way, as torch's zip writer does on a full disk, then fails as a plain ``OSError``).

    The file gets the permissions any new file gets (``0o666`` less the umask), not the ``0o600`` of a temporary
    file. A failed write raises ``OSError`` (disk full, file too large) and leaves no temporary file. A crash while
    writing leaves the previous file at ``path`` intact and a ``.<name>.*.tmp`` file that
    :func:`remove_stale_temporaries` cleans up.
    """
    atomic_write_all({path: data})


def _write_temporary(path: Path, data: bytes | memoryview | str) -> str:
    """``data`` in a hidden, fsynced temporary file beside ``path``; its name. A failed write leaves no file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX,
                                     delete=False) as tmp:
        try:
            tmp.write(data.encode() if isinstance(data, str) else data)
            tmp.flush()
            os.fsync(tmp.fileno())
            os.chmod(tmp.name, NEW_FILE_MODE)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    return tmp.name


def atomic_write_all(files: dict[str | os.PathLike, bytes | memoryview | str]) -> None:
    """Write several files all or none, as :func:`atomic_write` writes one: every temporary file is written and
    fsynced before any is renamed over its target.

    A full disk or a file-size limit fails while writing the temporaries (renames need no space): every previous
    file is then intact and no temporary is left. Only a crash in the microseconds between two renames can leave
    some files new and others old.

    Raises:
        OSError: a file could not be written; no target was changed.
    """
    written: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            written.append((_write_temporary(Path(path), data), Path(path)))
    except BaseException:
        for tmp, _ in written:
            os.unlink(tmp)
        raise
    for tmp, path in written:
        os.replace(tmp, path)


def shortest_floats(value: Any) -> Any:
    """``value`` with every float that is exactly a float32 written as the shortest decimal of that float32
    (``0.22699999809265137`` → ``0.227``), through dicts, lists and tuples; everything else unchanged.

    A float32 figure (a tensor's ``.item()``) widened to a Python float prints with float32's rounding noise; the
    shortest decimal that reads back as the same float32 is the figure as computed. A double that is not exactly a
    float32 (``0.1``, ``1 / 3``) is left as it is.
    """
    if isinstance(value, dict):
        return {k: shortest_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shortest_floats(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and abs(value) < 3e38 and float(np.float32(value)) == value:
        return float(repr(np.float32(value)))
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically, float32 figures as their shortest decimals."""
    atomic_write(path, json.dumps(shortest_floats(data), indent=2, default=str) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.*.tmp`` files a killed :func:`atomic_write` left in ``folder``; returns what was removed."""
    removed = []
    for path in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
