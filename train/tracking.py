"""The one place that turns the engine's dicts into log rows: W&B and ``metrics.jsonl``, one stream.

One :class:`Tracker` per run: ``wandb.init`` once (rank 0 only; other ranks get a no-op tracker), ``epoch`` as the
step metric of every other metric, one row per epoch (:func:`epoch_row` builds it from ``train_one_epoch`` and
``evaluate``), the checkpoint as a ``model`` Artifact, and the summary. Every epoch row also goes to
``out_dir/metrics.jsonl`` (timm's ``update_summary`` → ``summary.csv`` pattern), whatever the W&B mode, so a run can
be read (and ``sweeps/local.py`` can apply hyperband) without W&B's reader.

``wandb_mode=auto`` runs online when W&B credentials exist and offline otherwise — it never prompts. If W&B fails
(unreachable server, a logging call that raises), the run carries on offline or untracked with a warning; training
is never lost to tracking.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from train.config import ConfigError
from train.files import atomic_write, atomic_write_all, shortest_floats
from train.stops import stops_deferred

__all__ = ["METRICS_FILE", "Tracker", "check_wandb_environment", "epoch_row", "finish_active_run", "read_metrics",
           "resolve_mode", "stage_beside", "summary_tables"]

METRICS_FILE = "metrics.jsonl"
WANDB_FOLDERS = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")


def check_wandb_environment() -> None:
    """Refuse ``WANDB_*`` variables that W&B would refuse inside ``wandb.init`` (a pydantic or ``UsageError``
    traceback, after the data loaded), and W&B folder variables that name a file (W&B would then write somewhere
    else, or fail at the end staging the model).

    W&B's own rule: each variable is applied to a fresh ``wandb.Settings`` the way ``wandb.init`` applies them.

    Raises:
        ConfigError: one line naming the variable and W&B's reason.
    """
    import wandb

    for name, value in sorted(os.environ.items()):
        if not name.startswith("WANDB_"):
            continue
        if name in WANDB_FOLDERS and value and Path(value).exists() and not Path(value).is_dir():
            raise ConfigError(f"environment variable {name}={value!r} names a file; W&B needs a folder there")
        try:
            wandb.Settings().update_from_env_vars({name: value})
        except Exception as exc:  # pydantic's ValidationError, W&B's UsageError, a validator's ValueError
            errors = getattr(exc, "errors", None)
            reason = errors()[0]["msg"] if callable(errors) else _reason(exc).split(": ", 1)[-1]
            raise ConfigError(f"environment variable {name}={value!r} is refused by W&B: {reason}") from None


def resolve_mode(mode: str) -> str:
    """``auto`` → ``online`` when W&B credentials are configured (env, netrc, settings), else ``offline``."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled", "online"):
        return {"dryrun": "offline"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
    import wandb

    try:
        return "online" if wandb.login(prompt=False, verify=False) else "offline"
    except Exception:  # malformed credentials are no reason to lose a run
        return "offline"


_OUR_DATA_DIR: str | None = None  # the WANDB_DATA_DIR this module set (one the user set is never changed)


def stage_beside(wandb_folder: Path) -> None:
    """Make W&B stage artifact files (table images, the model) in ``wandb_folder``, the folder that holds the run
    folders, unless the user chose a ``WANDB_DATA_DIR``.

    By default W&B stages them under the home folder (``~/.local/share/wandb/artifacts/staging``) and its records
    name them there: copying the ``wandb/`` folder to another machine, or losing a container's home, then syncs
    tables without images and no model. Staged beside the runs, keeping one folder keeps everything.
    """
    global _OUR_DATA_DIR
    if os.environ.get("WANDB_DATA_DIR") in (None, "", _OUR_DATA_DIR):
        _OUR_DATA_DIR = os.environ["WANDB_DATA_DIR"] = str(wandb_folder.resolve())


def epoch_row(epoch: int, train: dict[str, float], val: dict[str, float]) -> dict[str, float]:
    """The one log row of an epoch, from the dicts of ``train_one_epoch`` and ``evaluate``: float32 figures as their
    shortest decimals, seconds to the millisecond and images/s to a tenth (what the clock can tell)."""
    return shortest_floats({
        "epoch": epoch,
        "train/loss": train["loss"],
        "train/acc": train["acc"],
        "val/loss": val["loss"],
        "val/acc": val["acc"],
        "val/acc_no_tta": val["acc_no_tta"],
        "lr": train["lr"],
        "epoch_seconds": round(train["seconds"] + val["seconds"], 3),
        "train/images_per_second": round(train["images_per_second"], 1),
    })


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file; a last line still being written (no newline yet) is left out."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            rows.append(json.loads(line))
    return rows


def _json_line(row: dict[str, Any]) -> str:
    plain = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(shortest_floats(plain)) + "\n"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message``: W&B errors can span many lines, a warning is one."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class Tracker:
    """A run's W&B run (or none: ``enabled`` False or mode ``disabled``) and its ``metrics.jsonl``.

    Args:
        config: Every flag; becomes the run's config.
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        project, entity, name: W&B project, entity (empty = default) and run name.
        run_id: Continue this W&B run id (resume); None or empty starts a new run.
        job_type: ``train`` or ``explain``.
        group: Optional W&B group (sweeps group their trials; ``WANDB_RUN_GROUP`` works too).
        enabled: False on non-zero ranks: every method is then a no-op.
        metrics_file: Where epoch rows are appended as JSON lines (None: nowhere).
    """

    def __init__(self, config: dict[str, Any], *, mode: str = "auto", project: str = "cifar-insight",
                 entity: str = "", name: str = "", run_id: str | None = None, job_type: str = "train",
                 group: str | None = None, enabled: bool = True, metrics_file: str | os.PathLike | None = None):
        self.run, self.mode, self._step = None, "disabled", 0
        self.metrics_file = Path(metrics_file) if metrics_file and enabled else None
        if not enabled:
            return
        if mode != "disabled":
            check_wandb_environment()
        self.mode = resolve_mode(mode)
        if self.mode == "disabled":
            return
        import wandb

        kwargs = dict(project=project, entity=entity or None, name=name or None, config=config, job_type=job_type,
                      group=group, id=run_id or None, resume="allow" if run_id else None)
        with stops_deferred():  # a stop inside wandb.init would leave W&B half started; it lands right after
            try:
                self.run = wandb.init(mode=self.mode, **kwargs)
            except Exception as exc:  # W&B unreachable or misconfigured: keep the run, offline
                if self.mode != "online":
                    raise
                _warn(f"W&B online init failed ({_reason(exc)}); logging offline instead")
                self.mode = "offline"
                self.run = wandb.init(mode="offline", **kwargs)
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")
            # W&B's next step (past 0 for a run resumed online), asked once while the run is surely alive: `run.step`
            # is a round trip to W&B's service that hangs 30 s once the run has ended under us; `log` keeps it
            self._step = self.run.step
        stage_beside(Path(self.run.dir).parents[1])

    @property
    def staging_dir(self) -> str | None:
        """Where W&B stages this run's artifact files (tables, images, the model), which ``wandb sync`` uploads."""
        return str(Path(os.environ.get("WANDB_DATA_DIR") or "") / "artifacts" / "staging") if self.run else None

    @property
    def id(self) -> str | None:
        """The W&B run id (None when untracked)."""
        return self.run.id if self.run else None

    @property
    def dir(self) -> str | None:
        """The local run folder (``.../wandb/offline-run-...``), which ``wandb sync`` uploads."""
        return str(Path(self.run.dir).parent) if self.run else None

    def sweep_values(self, config: dict[str, Any]) -> dict[str, Any]:
        """Under a W&B sweep agent: the keys whose value in ``wandb.config`` differs from ``config`` (else empty).

        The agent hands a run its parameters both as command-line flags (``${args}``) and through ``wandb.config``;
        a sweep whose ``command`` drops ``${args}`` would otherwise train with other values than W&B records.
        """
        if self.run is None or not os.environ.get("WANDB_SWEEP_ID"):
            return {}
        handed = dict(self.run.config)
        return {k: handed[k] for k in config if k in handed and handed[k] != config[k]}

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # a tracking failure must never cost the training run
            _warn(f"W&B {what} failed ({_reason(exc)}); continuing without W&B")
            self.run = None

    def _wandb_row(self, row: dict[str, Any], images: dict[str, tuple[np.ndarray, str]] | None) -> dict[str, Any]:
        import wandb

        media = {key: wandb.Image(pixels, caption=caption) for key, (pixels, caption) in (images or {}).items()}
        return {**row, **media}

    def log(self, row: dict[str, Any], commit: bool = True) -> None:
        """Log one W&B row at step ``row["epoch"]`` (so a resumed run's steps continue where they stopped); its
        tables go to the run's summary (:func:`summary_tables`).

        ``commit=False`` keeps the row open so that a later ``log`` of the same epoch (the explain row at the end
        of training) joins it: one history row per epoch. W&B drops data logged to a step already committed.
        """
        step = int(row["epoch"]) if "epoch" in row else None

        def log() -> None:
            tables = summary_tables(row)
            if tables:
                self.run.summary.update(tables)
            rest = {key: value for key, value in row.items() if key not in tables}
            at = step
            if rest and at is not None and at < self._step:
                # W&B drops data logged to a step it has committed ("Tried to log to step 1 that is less than the
                # current step 2"): log it at W&B's next step instead. The row keeps its `epoch`, which every chart
                # plots against (define_metric), so nothing moves; only W&B's internal step differs.
                _warn(f"W&B: epoch {at}'s row was already committed; logging these keys at the next W&B step "
                      f"({', '.join(sorted(rest)[:4])}{', ...' if len(rest) > 4 else ''})")
                at = None
            if rest:
                self.run.log(rest, step=at, commit=commit)
                # as W&B counts: a row logged open stays the next step, a committed one moves it past
                self._step = (self._step if at is None else at) + (1 if commit else 0)

        self._guard("log", log)

    def log_epoch(self, row: dict[str, Any], images: dict[str, tuple[np.ndarray, str]] | None = None,
                  commit: bool = True, files: dict[Path, bytes | memoryview] | None = None) -> None:
        """An epoch's row: added to ``metrics.jsonl`` (scalars), together with the epoch's ``files``, then logged to
        W&B with ``images``.

        Args:
            row: ``epoch`` and the epoch's numbers.
            images: ``{key: (uint8 [H, W, 3] pixels, caption)}`` logged as ``wandb.Image`` (not in the JSON file).
            commit: See :meth:`log`.
            files: The epoch's other files (its checkpoints), written with the row all or none
                (:func:`train.files.atomic_write_all`), before W&B sees the row.

        Raises:
            OSError: the files or the row could not be written (disk full): none was, nothing was logged.
        """
        together = dict(files or {})
        if self.metrics_file is not None:
            before = self.metrics_file.read_text() if self.metrics_file.exists() else ""
            together[self.metrics_file] = before[:before.rfind("\n") + 1] + _json_line(row)  # no half line
        if together:
            atomic_write_all(together)
        if self.run is not None:
            self.log(self._wandb_row(row, images), commit=commit)

    def continue_from(self, rows: list[dict[str, Any]],
                      images: list[dict[str, tuple[np.ndarray, str]]] | None = None, leave_open: bool = False) -> None:
        """Start the stream of a resumed run with its finished epochs' ``rows`` (and their ``images``).

        ``metrics.jsonl`` is rewritten to hold exactly those rows (a killed process may have appended one more).
        Offline W&B cannot reopen a run, and a killed process may not have flushed its last rows: the resumed
        offline part logs the finished epochs again (same steps), so it alone holds the whole run. Online, W&B
        resumes the run in place and nothing is logged again. ``leave_open``: the last row stays open (``commit``
        False), as the last epoch's row of a run that goes on to its finish: the explain row joins it there (logged
        committed, the explain row's step would be behind W&B's and dropped).
        """
        if self.metrics_file is not None:
            atomic_write(self.metrics_file, "".join(_json_line(row) for row in rows))
        if self.run is not None and self.mode == "offline":
            for i, row in enumerate(rows):
                self.log(self._wandb_row(row, images[i] if images else None),
                         commit=not (leave_open and i == len(rows) - 1))

    def log_model(self, path: str | os.PathLike, metadata: dict[str, Any], aliases: list[str]) -> None:
        """Log a checkpoint file as a W&B Artifact of type ``model`` named ``model-<run id>``."""
        if self.run is None:
            return
        import wandb

        def log() -> None:
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=metadata)
            # immutable: W&B reads the file where it is instead of copying it into its staging folder (for an offline
            # run a second copy of the model until `wandb sync`); best.pt no longer changes once the run finished
            # W&B records the path as given: a relative one (runs/x/best.pt) is missing to a sync run elsewhere
            artifact.add_file(str(Path(path).resolve()), name=Path(path).name, policy="immutable")
            self.run.log_artifact(artifact, aliases=aliases)

        self._guard("artifact upload", log)

    def summary(self, values: dict[str, Any]) -> None:
        """Set summary values of the run."""
        self._guard("summary", lambda: self.run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; say how to sync it when it was offline."""
        if self.run is None:
            return
        run_dir, offline = self.dir, self.run.settings.mode in ("offline", "dryrun")
        self._guard("finish", self.run.finish, exit_code=exit_code)
        self.run = None
        if offline:
            print(f"wandb: offline run saved in {run_dir}; upload it with `wandb sync {run_dir}`", file=sys.stderr)


# Tables whose key stays in history: the summary key of explain/label_issues holds the issue count (the name the
# label-issues issue gave both), so its table is logged in the explain row as before.
TABLES_IN_HISTORY = ("explain/label_issues",)


def summary_tables(row: dict[str, Any]) -> dict[str, Any]:
    """The W&B Tables of ``row`` that belong in the run's summary, not its history.

    A table in a history row adds its ``nrows``/``ncols``/``size`` fields to the run's metrics, each a one-point chart
    (seen in ``wandb leet``: ~27 of them before the epoch charts), while W&B's table panels read the summary anyway.
    Left in history: incremental tables (their rows arrive batch by batch as history steps), custom charts
    (``wandb.plot.*``, which W&B cannot store in a summary) and :data:`TABLES_IN_HISTORY`.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return {}
    return {key: value for key, value in row.items() if isinstance(value, wandb.Table)
            and value.log_mode != "INCREMENTAL" and key not in TABLES_IN_HISTORY}


def finish_active_run(exit_code: int) -> None:
    """Finish whatever W&B run this process has open (a stop or an error can land anywhere, even inside
    ``wandb.init``), recording ``exit_code``: W&B then shows the run as ended, not as still running."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb else None
    if run is None:
        return
    try:
        run.finish(exit_code=exit_code)
    except Exception as exc:  # the process is ending anyway; say why W&B could not be told
        _warn(f"W&B finish failed ({_reason(exc)})")
