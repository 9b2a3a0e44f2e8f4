"""Checkpoints: atomic save, safe load.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(path, weights_only=True)`` — loading never runs code. Every checkpoint has ``format``, ``model`` (a
state_dict for ``timm.create_model(config["model"], num_classes=len(classes))``), ``config``, ``epoch`` (last
finished epoch), ``metrics`` (that epoch's log row) and ``classes``: what a user of the model needs, and all that
``best.pt`` holds. ``last.pt`` adds what resume needs (see :mod:`train.state`) until the run finishes; then it is
replaced by the run's *record* (``finished: True``, no ``model``, under 100 kB) unless ``--keep_checkpoints all``.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.files import atomic_write
from train.stops import stops_deferred

__all__ = ["FORMAT", "CheckpointError", "checkpoint_bytes", "load_checkpoint", "load_model_state", "save_checkpoint",
           "unwrap"]

FORMAT = "cifar-insight/1"
MAX_CLASSES = 100_000


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, foreign or does not fit; the message is one line."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def checkpoint_bytes(state: dict[str, Any]) -> memoryview:
    """``state`` (plus ``format``) serialized as a checkpoint file's content, for :func:`train.files.atomic_write_all`
    (several files committed together) or :func:`save_checkpoint`."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return buffer.getbuffer()


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (plus ``format``) to ``path`` atomically; SIGINT/SIGTERM wait until the save is done.

    Raises:
        OSError: the disk is full or the folder not writable; the previous file at ``path`` is intact.
    """
    data = checkpoint_bytes(state)
    with stops_deferred():
        atomic_write(path, data)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _problem(state: Any) -> str | None:
    """What makes ``state`` not a checkpoint of this project (wrong keys or types), or None."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return f"expected format {FORMAT}"
    if state.get("finished", False) not in (True, False):
        return "its 'finished' is not what this project writes"
    checks = {
        "model": lambda v: isinstance(v, dict) and v and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                             for k, t in v.items()),
        "config": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "metrics": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items()),
        "classes": lambda v: isinstance(v, list | tuple) and 0 < len(v) <= MAX_CLASSES
        and all(isinstance(c, str) for c in v),
    }
    if state.get("finished"):  # a finished run's record: everything but the weights
        checks.pop("model")
    for key, ok in checks.items():
        if key not in state:
            return f"no {key!r}"
        if not ok(state[key]):
            return f"its {key!r} is not what this project writes"
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    record: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``, and check its structure.

    Args:
        record: also accept a finished run's record (a ``last.pt`` without weights), as resume and ``out_dir``'s
            checks read it; a user of the model gets a one-line error for it instead.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint of this project (keys or types), a run's
            record where a model is needed, or carries code.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} " + ("is a folder" if path.is_dir() else "does not exist"))
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's safe loader names the code a pickle wanted to run (GLOBAL module.name) or the pickle instruction it
        # does not allow; say which, never suggest weights_only=False or add_safe_globals
        code = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if code:
            raise CheckpointError(f"checkpoint {str(path)!r} holds code ({code[1][:100]}) and was refused by the safe "
                                  f"loader: a checkpoint is read as data, never run") from None
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt (not a torch.save file)") from None
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, … on truncated or foreign files
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({type(exc).__name__})") from None
    problem = _problem(state)
    if problem:
        raise CheckpointError(f"{str(path)!r} is not a cifar-insight checkpoint ({problem})")
    if state.get("finished") and not record:
        best = Path(path).with_name("best.pt")
        kept = state.get("config", {}).get("keep_checkpoints") if isinstance(state.get("config"), dict) else None
        hint = (f"use the run's best.pt ({best})" if best.is_file() else
                "and this run kept no weights (--keep_checkpoints none, as sweep trials do): there is no model to "
                "load; train again with --keep_checkpoints best" if kept == "none" else
                f"and its best.pt is not beside it ({best}): load the best.pt of that run, wherever it went")
        raise CheckpointError(f"checkpoint {str(path)!r} is a finished run's record and holds no weights (a run keeps "
                              f"its last.pt whole only with --keep_checkpoints all); {hint}")
    return state


def load_model_state(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load a checkpoint's weights into ``model``, turning a shape or key mismatch into a :class:`CheckpointError`."""
    try:
        unwrap(model).load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError) as exc:
        lines = str(exc).splitlines()
        detail = next((line.strip() for line in lines[1:] if line.strip()), lines[0] if lines else "")
        raise CheckpointError(f"checkpoint {source!r} does not fit model {state['config'].get('model')!r}: "
                              f"{detail[:200]}") from None
