"""The only training module that talks to Weights & Biases.

One :class:`Tracker` per run: ``wandb.init`` once (rank 0 only; other ranks get a no-op tracker), ``epoch`` as the
step metric of every other metric, one ``log`` per epoch (:func:`epoch_row` turns the engine's dicts into that
row), the checkpoint as a ``model`` Artifact, and the summary. ``wandb_mode=auto`` runs online when W&B credentials
exist and offline otherwise — it never prompts. If W&B fails (unreachable server, a logging call that raises),
the run carries on offline or untracked with a warning; training is never lost to tracking.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["Tracker", "epoch_row", "resolve_mode"]


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


def epoch_row(epoch: int, train: dict[str, float], val: dict[str, float]) -> dict[str, float]:
    """The one log row of an epoch, from the dicts of ``train_one_epoch`` and ``evaluate``."""
    return {
        "epoch": epoch,
        "train/loss": train["loss"],
        "train/acc": train["acc"],
        "val/loss": val["loss"],
        "val/acc": val["acc"],
        "val/acc_no_tta": val["acc_no_tta"],
        "lr": train["lr"],
        "epoch_seconds": train["seconds"] + val["seconds"],
        "train/images_per_second": train["images_per_second"],
    }


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _reason(exc: Exception) -> str:
    """``Type: first line of the message``: W&B errors can span many lines, a warning is one."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class Tracker:
    """A W&B run (or nothing, when ``enabled`` is False or the mode is ``disabled``).

    Args:
        config: Every flag; becomes the run's config.
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        project, entity, name: W&B project, entity (empty = default) and run name.
        run_id: Continue this W&B run id (resume); None starts a new run.
        job_type: ``train`` or ``explain``.
        group: Optional W&B group (sweeps group their trials).
        enabled: False on non-zero ranks: every method is then a no-op.
    """

    def __init__(self, config: dict[str, Any], *, mode: str = "auto", project: str = "cifar-insight",
                 entity: str = "", name: str = "", run_id: str | None = None, job_type: str = "train",
                 group: str | None = None, enabled: bool = True):
        self.run, self.mode = None, "disabled"
        if not enabled:
            return
        import wandb

        self.mode = resolve_mode(mode)
        kwargs = dict(project=project, entity=entity or None, name=name or None, config=config, job_type=job_type,
                      group=group, id=run_id, resume="allow" if run_id else None)
        try:
            self.run = wandb.init(mode=self.mode, **kwargs)
        except Exception as exc:  # W&B unreachable or misconfigured: keep the run, offline
            if self.mode != "online":
                raise
            _warn(f"W&B online init failed ({_reason(exc)}); logging offline instead")
            self.mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)
        if self.mode == "disabled":
            self.run = None
            return
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

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

    def log(self, row: dict[str, Any], commit: bool = True) -> None:
        """Log one row at W&B step ``row["epoch"]`` (so a resumed run's steps continue where they stopped).

        ``commit=False`` keeps the row open so that a later ``log`` of the same epoch (the explain row at the end
        of training) joins it: one history row per epoch. W&B drops data logged to a step already committed.
        """
        step = int(row["epoch"]) if "epoch" in row else None
        self._guard("log", lambda: self.run.log(row, step=step, commit=commit))

    def log_model(self, path: str | os.PathLike, metadata: dict[str, Any], aliases: list[str]) -> None:
        """Log a checkpoint file as a W&B Artifact of type ``model`` named ``model-<run id>``."""
        import wandb

        def log() -> None:
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=metadata)
            artifact.add_file(str(path), name=Path(path).name)
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

