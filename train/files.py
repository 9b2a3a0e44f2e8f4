"""Atomic file writes: a reader (or a ``kill -9``) never sees half a file.

Checkpoints, the decoded-data cache, ``summary.json``, ``metrics.jsonl`` rewrites and the sweep leaderboard are all
written by :func:`atomic_write`: a temporary file in the same folder, fsync, then a rename over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["TMP_SUFFIX", "atomic_write", "remove_stale_temporaries", "write_json"]

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
    path = Path(path)
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
    os.replace(tmp.name, path)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.*.tmp`` files a killed :func:`atomic_write` left in ``folder``; returns what was removed."""
    removed = []
    for path in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
