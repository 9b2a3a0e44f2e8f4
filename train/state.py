"""What a run carries from epoch to epoch and across a resume, and who may write its ``out_dir``.

* :class:`RunState` — the resumable state besides the weights and the optimizer: progress, every finished epoch's
  row, the W&B run id, the probe series; stored in ``last.pt`` under ``state``.
* :func:`resume_config` — the resume policy: ``--resume PATH|auto``, the checkpoint's config overridden only by
  the flags that may change, "nothing to resume" for a finished run.
* :class:`OutDir` — an exclusive lock on ``out_dir`` for the run's lifetime (a lock file with the pid, released on
  exit and by the kernel when the process dies), refusing a folder that holds another run, cleaning up what a
  killed save left, and removing a folder it created when the run ends before its first checkpoint.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import torch

from train.checkpoint import CheckpointError, load_checkpoint
from train.config import Config, ConfigError, config_from_dict
from train.files import remove_stale_temporaries

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; out_dir is then not protected against a second process
    fcntl = None

__all__ = ["RESUME_OVERRIDABLE", "CheckpointFolderLock", "NothingToResume", "OutDir", "RunError", "RunState",
           "check_classes", "check_data", "find_last_checkpoint", "resume_config", "resume_state"]

# What a resumed run may change; everything else (data, model, schedule, seed, probes) is the checkpoint's.
# data_dir may change: the same images under another path (a moved folder, another working directory) resume, as
# the checkpoint's per-class fingerprint of its images tells (check_data).
RESUME_OVERRIDABLE = {"resume", "data_dir", "device", "precision", "compile", "eval_batch_size", "out_dir",
                      "wandb_mode", "wandb_project", "wandb_entity", "explain_samples", "cam_method", "cam_layer",
                      "trust", "trust_images", "label_issues", "keep_checkpoints"}
LOCK_FILE = ".lock"


class RunError(ValueError):
    """``out_dir`` cannot be used for this run (in use, holds another run, not writable); one line for the user."""


class NothingToResume(Exception):  # noqa: N818  (not an error: the program says so and exits 0)
    """``--resume`` of a run that already finished all its epochs and wrote its ``summary.json``."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class RunState:
    """The resumable state of a run besides weights, optimizer, schedule and random generators."""

    run_uid: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells this run from another in one out_dir
    epoch: int = 0  # last finished epoch
    best_acc: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0  # training steps only
    loop_seconds: float = 0.0  # whole epochs, evaluation included
    train_images: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # each finished epoch's row, as logged
    wandb_run_id: str = ""
    probes: dict[str, Any] = field(default_factory=dict)  # explain.probes' series (indices, per-epoch results)

    def record(self, row: dict[str, float], train: dict[str, float]) -> bool:
        """Account for a finished epoch; returns whether it is the best so far (by ``val/acc``)."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        self.train_seconds += train["seconds"]
        self.loop_seconds += row["epoch_seconds"]
        self.train_images += train["images"]
        is_best = row["val/acc"] > self.best_acc
        if is_best:
            self.best_acc, self.best_epoch = row["val/acc"], self.epoch
        return is_best

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> RunState:
        """Rebuild from a checkpoint's ``state``, refusing wrong keys or types (a crafted or damaged file)."""
        problem = "it is not a mapping" if not isinstance(data, dict) else None
        if problem is None:
            checks = {"run_uid": lambda v: isinstance(v, str) and 0 < len(v) <= 64,
                      "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                      "best_acc": _number, "best_epoch": lambda v: isinstance(v, int) and v >= 0,
                      "train_seconds": _number, "loop_seconds": _number, "train_images": _number,
                      "history": lambda v: isinstance(v, list) and len(v) == data.get("epoch")
                      and all(isinstance(r, dict) and all(isinstance(k, str) and (_number(x) or x is None)
                                                          for k, x in r.items()) for r in v),
                      "wandb_run_id": lambda v: isinstance(v, str) and len(v) <= 128,
                      "probes": lambda v: isinstance(v, dict)}
            problem = next((f"its {k!r} is missing or malformed" for k, ok in checks.items()
                            if k not in data or not ok(data[k])), None)
        if problem:
            raise CheckpointError(f"checkpoint {source!r} cannot be resumed: its run state is damaged ({problem})")
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def find_last_checkpoint(config: Config) -> str:
    """``--resume auto``: the newest ``last.pt`` of this ``out_dir`` (or ``runs/<run_name>``, or the newest unfinished
    run under ``runs/`` when neither is given: a finished run there is another run's record, not this job's to
    continue); empty when there is none, so the same command starts or continues a run."""
    if config.out_dir:
        candidates = [Path(config.out_dir) / "last.pt"]
    elif config.run_name:
        candidates = [Path("runs") / config.run_name / "last.pt"]
    else:
        candidates = [path for path in Path("runs").glob("*/last.pt") if path.is_file() and not _finished(path)]
    existing = [path for path in candidates if path.is_file()]
    return str(max(existing, key=lambda path: path.stat().st_mtime)) if existing else ""


RESUME_KEYS = ("optimizer", "scheduler", "rng", "state")


def _refuse_changed_flags(config: Config, given: set[str], stored: dict[str, Any]) -> None:
    """Flags given now that may not change on resume (not in :data:`RESUME_OVERRIDABLE`) must equal the stored ones."""
    for key in sorted(given - RESUME_OVERRIDABLE):
        if getattr(config, key) != stored.get(key):
            raise ConfigError(f"--{key} cannot change when resuming (the checkpoint has {stored.get(key)!r}); "
                              f"start a new run instead")


def resume_config(config: Config, given: set[str]) -> tuple[Config, dict[str, Any] | None]:
    """Apply the resume policy: the checkpoint's config, overridden by the flags given now that may change.

    Returns:
        The run's config (``out_dir`` beside the checkpoint unless ``--out_dir`` is given) and the loaded
        checkpoint, or ``(config, None)`` for a new run.

    Raises:
        CheckpointError: the file cannot be resumed (not a ``last.pt``, damaged).
        ConfigError: a flag that may not change differs from the checkpoint's.
        NothingToResume: the run already finished: all its epochs, and its finish (the explain step,
            ``summary.json``). A run stopped after its last epoch but before ``summary.json`` resumes to finish.
    """
    if not config.resume:
        return config, None
    checkpoint = load_checkpoint(config.resume, record=True)
    if checkpoint.get("finished"):  # the record a finished run leaves as its last.pt
        _refuse_changed_flags(config, given, checkpoint["config"])
        state = RunState.from_dict(checkpoint.get("state"), config.resume)
        raise NothingToResume(f"nothing to resume: {config.resume} finished all {state.epoch} epochs (test acc "
                              f"{checkpoint['metrics'].get('val/acc', float('nan')):.4f}); nothing was changed")
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {config.resume!r} holds a model but not what resume needs "
                              f"({', '.join(missing)}); resume from a run's last.pt")
    rng = checkpoint["rng"]
    if not (isinstance(rng, dict) and all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8
                                          for k in ("torch", "loader"))):
        raise CheckpointError(f"checkpoint {config.resume!r} cannot be resumed: its random state is damaged")
    stored = checkpoint["config"]
    _refuse_changed_flags(config, given, stored)
    try:
        resumed = config_from_dict({**stored, **{k: getattr(config, k) for k in given}})
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {config.resume!r} has an unusable config ({exc})") from None
    state = RunState.from_dict(checkpoint["state"], config.resume)
    if state.epoch >= resumed.epochs and (Path(config.resume).parent / "summary.json").is_file():
        raise NothingToResume(f"nothing to resume: {config.resume} finished all {resumed.epochs} epochs "
                              f"(test acc {checkpoint['metrics'].get('val/acc', float('nan')):.4f}); nothing was "
                              f"changed")
    if "out_dir" not in given:  # beside the checkpoint it continues, wherever the run was started from
        resumed.out_dir = str(Path(config.resume).parent)
    return resumed, checkpoint


def _shown(names: list[str], most: int = 5) -> str:
    return ", ".join(map(repr, names[:most])) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_classes(stored: list[str], classes: list[str], source: str) -> None:
    """Refuse to resume onto data whose classes (names, order, count) differ from the checkpoint's: its label indices
    would silently mean other classes (a class folder renamed between a stop and ``--resume``).

    Raises:
        CheckpointError: one line saying what changed.
    """
    stored, classes = list(stored), list(classes)
    if stored == classes:
        return
    old_names, new_names = set(stored), set(classes)
    gone, new = [c for c in stored if c not in new_names], [c for c in classes if c not in old_names]
    changes = [f"{len(stored)} classes in the checkpoint, {len(classes)} in the data"] \
        if len(stored) != len(classes) else []
    changes += [f"gone: {_shown(gone)}"] if gone else []
    changes += [f"new: {_shown(new)}"] if new else []
    if not (gone or new or changes):
        i = next(i for i, (a, b) in enumerate(zip(stored, classes, strict=True)) if a != b)
        changes = [f"the same names in another order: class {i} was {stored[i]!r}, is now {classes[i]!r}"]
    raise CheckpointError(f"checkpoint {source!r} cannot be resumed: the data's classes differ from the checkpoint's "
                          f"({'; '.join(changes)}); resume on the data it was trained on, or start a new run")


def check_data(stored: Any, data: dict[str, dict[str, Any]], source: str) -> None:
    """Refuse to resume onto data whose images differ from what the checkpoint trained on (its per-class fingerprint,
    :func:`train.data.data_fingerprint`): two class folders swapped keep the class list but exchange the labels,
    and images added, removed or edited change the run's data under it.

    A checkpoint written before fingerprints existed (no ``data``) is resumed with a warning.

    Raises:
        CheckpointError: one line saying which classes changed and how.
    """
    if not isinstance(stored, dict):
        print(f"warning: checkpoint {source!r} records no fingerprint of its data (written by an older version): "
              "resuming without checking that the images are the ones it trained on", file=sys.stderr, flush=True)
        return
    owner = {entry.get("digest"): name for name, entry in stored.items() if isinstance(entry, dict)}
    changes = []
    for name, entry in data.items():
        old = stored.get(name)
        if not isinstance(old, dict) or old.get("digest") == entry["digest"]:
            continue
        if owner.get(entry["digest"]) not in (None, name):
            changes.append(f"{name!r} now holds the images {owner[entry['digest']]!r} had")
            continue
        counts = [f"{split} {old.get(split)} -> {entry[split]}" for split in ("train", "test")
                  if old.get(split) != entry[split]]
        renamed = not counts and old.get("pixels") is not None and old.get("pixels") == entry.get("pixels")
        changes.append(f"{name!r}: " + (f"images {', '.join(counts)}" if counts else
                                        "images renamed (same pixels, other file names)" if renamed else
                                        "images edited (same counts)"))
    if changes:
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        raise CheckpointError(f"checkpoint {source!r} cannot be resumed: the data changed since it was saved "
                              f"({'; '.join(changes[:4])}{more}); resume on the data it was trained on, or start a "
                              "new run")


def resume_state(checkpoint: dict[str, Any] | None, source: str) -> RunState:
    """The :class:`RunState` of a resumed checkpoint, or a fresh one."""
    return RunState.from_dict(checkpoint["state"], source) if checkpoint else RunState()


def _lock(file: IO[str]) -> str | None:
    """Take the exclusive lock of an open ``.lock`` file (released by the kernel when the process dies) and write
    this process's pid in it (when writable); returns the pid written by the process that holds it instead, or None."""
    if fcntl is not None:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            for _ in range(20):  # the holder writes its pid just after locking: wait up to ~1 s for it
                file.seek(0)
                holder = file.read().strip()
                if holder:
                    return holder
                time.sleep(0.05)
            return "unknown"
    if file.writable():
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
    return None


class CheckpointFolderLock:
    """Hold the lock of the folder a resumed checkpoint comes from while the run continues in another ``--out_dir``:
    the run still going there (or another resume of the same checkpoint) would write the same W&B run id.

    Args:
        checkpoint: The ``--resume`` file.
        out_dir: Where the resumed run writes; nothing is locked when it is the checkpoint's own folder
            (:class:`OutDir` locks that one).

    Raises:
        RunError: the folder is locked: its run is still running.
    """

    def __init__(self, checkpoint: str, out_dir: str):
        self._file: IO[str] | None = None
        folder = Path(checkpoint).parent
        self._path = folder / LOCK_FILE
        if folder.resolve() == Path(out_dir).resolve():
            return
        self._made = not self._path.exists()  # then removed again by close(), as OutDir removes its own
        try:
            self._file = open(self._path, "a+")  # noqa: SIM115  (held until close())
        except OSError:
            try:  # a read-only folder: its lock file, if any, can still tell whether a run holds it
                self._file = open(self._path)  # noqa: SIM115
            except OSError:
                return  # no lock file and none can be made there: no run holds the folder
        holder = _lock(self._file)
        if holder:
            self.close()
            raise RunError(f"--resume {checkpoint!r}: its run is still running (process {holder} holds "
                           f"{str(folder)!r}); stop it first, or wait until it ends")

    def close(self) -> None:
        """Release the lock (and remove the lock file when this made it)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._made:
                self._path.unlink(missing_ok=True)


def _finished(last: Path) -> bool:
    """Whether ``last`` is a finished run's record (nothing left to resume); unreadable counts as not."""
    try:
        return bool(load_checkpoint(last, record=True).get("finished"))
    except CheckpointError:
        return False


class OutDir:
    """The run's folder, held with an exclusive lock from :meth:`open` to :meth:`close`.

    Args:
        path: The folder (created when missing).
        run_uid: This run's :attr:`RunState.run_uid`.
        resuming: True when continuing a checkpoint (the folder may then hold that run's files, and only those).
    """

    def __init__(self, path: str | os.PathLike, run_uid: str, resuming: bool):
        self.path, self.run_uid, self.resuming = Path(path), run_uid, resuming
        self._lock_file = None
        self._created: list[Path] = []

    def open(self) -> OutDir:
        """Create (if needed), lock and check the folder.

        Raises:
            RunError: not a folder, not writable, in use by another process, or holding another run.
        """
        name = str(self.path)
        try:
            if self.path.exists() and not self.path.is_dir():
                raise RunError(f"--out_dir {name!r} is a file, not a folder")
            for parent in reversed([self.path, *self.path.parents]):
                if not parent.exists():
                    try:
                        parent.mkdir()
                    except FileExistsError:  # another run made it since exists(): the lock below decides who runs
                        if not parent.is_dir():
                            raise
                        continue
                    self._created.append(parent)
            self._lock_file = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115  (held until close())
        except OSError as exc:
            self.close()
            reason = "its name is too long" if exc.errno == errno.ENAMETOOLONG else f"{exc.strerror or exc}"
            raise RunError(f"--out_dir {name!r} is not writable ({reason})") from None
        holder = _lock(self._lock_file)
        if holder:
            self._lock_file.close()
            self._lock_file = None
            raise RunError(f"--out_dir {name!r} is in use by process {holder}")
        try:
            self._check_holds_no_other_run()
        except BaseException:
            self.close()
            raise
        remove_stale_temporaries(self.path)
        return self

    def _check_holds_no_other_run(self) -> None:
        last, best = self.path / "last.pt", self.path / "best.pt"
        if not self.resuming:
            if last.exists() or best.exists():
                hint = ("its first save was cut short (best.pt without last.pt)" if not last.exists() else
                        "it finished (explain it with python explain/run.py --checkpoint "
                        f"{best if best.exists() else last})" if _finished(last) else
                        f"continue it with --resume {last}")
                raise RunError(f"--out_dir {str(self.path)!r} already holds a run; {hint}, or choose another "
                               f"--out_dir/--run_name")
            return
        for path in (last, best):
            if path.exists():
                try:
                    uid = load_checkpoint(path, record=True).get("run_uid")
                except CheckpointError:
                    uid = None
                if uid != self.run_uid:
                    raise RunError(f"--out_dir {str(self.path)!r} holds a different run ({path.name}); resume into "
                                   f"the checkpoint's own folder or an empty --out_dir")

    def close(self, keep: bool = True) -> None:
        """Release the lock; with ``keep=False`` (no checkpoint was written) remove the folders :meth:`open` made,
        when nothing else was put in them."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        if not keep:
            for folder in reversed(self._created):
                try:
                    folder.rmdir()  # only succeeds when empty
                except OSError:
                    break
        self._created = []
