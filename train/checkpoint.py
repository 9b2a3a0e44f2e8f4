"""Checkpoints: atomic save, safe load.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(path, weights_only=True)`` — loading never runs code. Keys: ``model`` (a state_dict for
``timm.create_model(config["model"], num_classes=len(classes))``), ``config``, ``epoch`` (last finished epoch),
``metrics`` (that epoch's log row), ``classes``, and what resume needs (``optimizer``, ``scheduler``, ``rng``,
``wandb_run_id``, ``best``, ``train_seconds``, ``train_images``).
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "load_model_state", "save_checkpoint", "unwrap"]

FORMAT = "cifar-insight/1"
REQUIRED_KEYS = ("format", "model", "config", "epoch", "metrics", "classes")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, foreign or does not fit; the message is one line."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (main thread only), then deliver them; blocks nest.

    ``torch.save``'s zip writer turns an exception raised inside it by a signal handler into a RuntimeError, so a
    stop that lands mid-save would crash instead of stopping cleanly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in pending:
            signal.raise_signal(sig)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A crash while saving leaves the previous file at ``path`` intact; SIGINT/SIGTERM wait until the save is done.
    """
    path = Path(path)
    state = {"format": FORMAT, **state}
    with stops_deferred(), tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                                        delete=False) as tmp:
        try:
            torch.save(state, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
        os.replace(tmp.name, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint of this project, or carries code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} " + ("is a folder" if path.is_dir() else "does not exist"))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        refused = next((line for line in lines if "Unsupported global" in line), None)
        if refused:  # a pickle that names code to run: say what it wanted, never suggest weights_only=False
            raise CheckpointError(f"checkpoint {str(path)!r} was refused by the safe loader ({refused})") from None
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt (not a torch.save file)") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, … on truncated or foreign files
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{str(path)!r} is not a cifar-insight checkpoint (expected format {FORMAT})")
    return state


def load_model_state(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load a checkpoint's weights into ``model``, turning a shape or key mismatch into a :class:`CheckpointError`."""
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = next((line.strip() for line in lines[1:] if line.strip()), lines[0])
        raise CheckpointError(f"checkpoint {source!r} does not fit model {state['config'].get('model')!r}: "
                              f"{detail[:200]}") from None
