"""Train a timm classifier on CIFAR-10 (or any image folder) with every epoch tracked in W&B.

    python train/run.py                                   # the default 20-epoch recipe on ./data
    python train/run.py --data_dir ~/cifar10-jpeg --epochs=2 --train_subset=2000 --test_subset=1000
    python train/run.py --config my.yaml --lr 0.1         # file of defaults, command line wins
    python train/run.py --resume runs/NAME/last.pt        # continue an interrupted run, same W&B run id
    torchrun --standalone --nproc_per_node=8 train/run.py # DDP: same flags, --batch_size is the global batch

Writes ``out_dir`` (default ``runs/<run_name>``): ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``summary.json``,
``config.json`` (the resolved config) and the explain pictures, plus a W&B run (offline under ``$WANDB_DIR/wandb``
when there are no W&B credentials).
Bad input exits with status 2 and one ``error:`` line; SIGTERM and Ctrl-C stop cleanly with a ``stopped:`` line.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import sys

if __name__ == "__main__":  # the imports below take seconds: a stop meanwhile ends quietly, not with a traceback
    def _set_stop_handlers(handler: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup, `cmd &`: an ignored signal stays ignored
                signal.signal(sig, handler)

    def _stopped_while_starting(signum: int, frame: object) -> None:
        if os.environ.get("RANK", "0") == "0":  # under torchrun one process speaks for the run
            print(f"stopped: {signal.Signals(signum).name} during start-up; nothing was saved", file=sys.stderr)
        sys.stderr.flush()  # then exit at once: a library import may swallow SystemExit; nothing is open yet
        os._exit(130 if signum == signal.SIGINT else 0)

    _set_stop_handlers(_stopped_while_starting)
    # Registered first, so it runs last: after W&B's exit hooks CPython resets Python signal handlers to the default
    # (death, status 143) while it shuts down; an ignored signal stays ignored.
    atexit.register(_set_stop_handlers, signal.SIG_IGN)

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python train/run.py`: import the repo's packages, not train/*.py as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm.utils
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from explain.probes import Probes, choose_probes
from explain.report import ExplainSettings, check_cam_settings, explain_model, explain_summary, write_probes
from explain.report_labels import LABEL_KEYS
from train.checkpoint import CheckpointError, checkpoint_bytes, load_model_state, save_checkpoint, unwrap
from train.config import Config, ConfigError, one_line, parse_args
from train.data import DataError, Dataset, balanced_subset, data_fingerprint, load_data
from train.engine import (
    EMULATED_BF16,
    NonFiniteLossError,
    Recipe,
    build_recipe,
    compile_overhead,
    cpu_bf16_native,
    precision_name,
    resolve_device,
)
from train.files import write_json
from train.model import check_model_name
from train.state import (
    CheckpointFolderLock,
    NothingToResume,
    OutDir,
    RunError,
    RunState,
    check_classes,
    check_data,
    find_last_checkpoint,
    resume_config,
    resume_state,
)
from train.stops import Stopped, exit_status, stops_deferred, stops_ignored, stops_raise
from train.tracking import METRICS_FILE, Tracker, check_wandb_environment, epoch_row, finish_active_run

USER_ERRORS = (ConfigError, DataError, CheckpointError, RunError)
RUN_ENDED = False  # set by finish() before its last line: a stop between fit()'s return and main() finds it


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged, a save failed); finished checkpoints are kept."""


# ---------------------------------------------------------------------------------------------------------------------
# Processes: one, or one per GPU under torchrun


def init_distributed() -> tuple[int, int]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join the process group: NCCL for CUDA tensors, gloo for CPU ones.

    Returns ``(rank, world_size)``; ``(0, 1)`` for a plain single process.
    """
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"WORLD_SIZE={text!r} is not a process count (torchrun sets it; unset it for one process)")
    world_size = int(text)
    if world_size == 1:
        return 0, 1
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:  # torch.distributed would raise "ValueError ... RANK expected" as a traceback
        raise ConfigError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start several processes with "
                          f"torchrun --nproc_per_node={world_size} train/run.py ..., or unset WORLD_SIZE for one")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world_size


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a run name made from the clock)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """Everything one training run works with, built by :func:`set_up`."""

    config: Config
    state: RunState
    out_dir: Path
    device: torch.device
    train_set: Dataset
    test_set: Dataset
    test_indices: torch.Tensor  # positions of test_set's images in the full test set
    recipe: Recipe
    net: nn.Module  # what trains: the model, wrapped for DDP and/or compiled
    eval_net: nn.Module  # what evaluates (not the DDP wrapper: shards may differ in length)
    tracker: Tracker
    probes: Probes | None  # rank 0, --probe_images > 0
    rank: int
    world_size: int
    first_epoch: int  # the first epoch this process trains (under --compile it compiles)
    data: dict[str, dict[str, Any]]  # per class: train/test counts and a digest (train.data.data_fingerprint)
    phase: str = "start-up"  # what a stop interrupts: "start-up", "epoch N", "explain", "finish", "closing"

    def say(self, *args: Any) -> None:
        if self.rank == 0:
            print(*args, flush=True)


def set_up(config: Config, checkpoint: dict | None, state: RunState, rank: int, world_size: int,
           given: set[str] = frozenset()) -> Run:
    """Device, seeds, data, the recipe (model, optimizer, schedule), the resumed state and the W&B run."""
    device = resolve_device(config.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK)
    timm.utils.random_seed(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible matmuls
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not config.deterministic  # autotuned kernels are fastest but may vary

    # ---- data: decoded once, resident on the device ----
    old_path = checkpoint is not None and "data_dir" not in given  # the checkpoint's path: the data may have moved
    try:
        train_set, test_set = load_data(config.data_dir, download=not old_path)  # never download into a stale path
    except DataError as exc:
        if old_path:
            raise DataError(f"{exc} (the checkpoint's --data_dir); if the images moved, resume with --data_dir "
                            f"where they are now: the checkpoint checks they are the same images") from None
        raise
    data = data_fingerprint(train_set, test_set)
    if checkpoint:  # a renamed or swapped class folder would make the resumed labels mean other classes
        check_classes(checkpoint["classes"], train_set.classes, config.resume)
        check_data(checkpoint.get("data"), data, config.resume)
    for note in train_set.notes + test_set.notes if rank == 0 else []:
        print(note, file=sys.stderr if note.startswith("warning:") else sys.stdout, flush=True)
    train_set = train_set.subset(balanced_subset(train_set.labels, config.train_subset, config.seed))
    probe_indices = choose_probes(test_set.labels, config.probe_images, config.seed)  # in the full test set
    probe_set = test_set.subset(probe_indices)
    test_indices = balanced_subset(test_set.labels, config.test_subset, config.seed)
    test_set = test_set.subset(test_indices)

    # ---- the recipe; a CAM typo must fail now, not after hours of training ----
    batch_source = "checkpoint" if checkpoint is not None and "batch_size" not in given else ""
    recipe = build_recipe(config, train_set, test_set, device, rank=rank, world_size=world_size,
                          batch_source=batch_source)
    probes = None
    if config.explain_samples or config.probe_images:
        try:
            layers = check_cam_settings(recipe.model, config.cam_method, config.cam_layer)
        except ValueError as exc:
            raise ConfigError(f"--cam_method/--cam_layer: {exc}") from None
        if rank == 0 and len(probe_set):
            try:
                probes = Probes(probe_set.images, probe_set.labels, probe_indices, probe_set.classes,
                                config.cam_method, layers, state.probes)
            except ValueError as exc:
                raise CheckpointError(f"checkpoint {config.resume!r} cannot be resumed: {exc}") from None
    if checkpoint:
        restore(recipe, checkpoint, config.resume)
    net = DistributedDataParallel(recipe.model, device_ids=[device] if device.type == "cuda" else None) \
        if world_size > 1 else recipe.model
    net = torch.compile(net) if config.compile else net
    eval_net = (torch.compile(recipe.model) if config.compile else recipe.model) if world_size > 1 else net

    # ---- tracking: W&B (rank 0) and metrics.jsonl ----
    out_dir = Path(config.out_dir)
    tracker = Tracker(config.to_dict(), mode=config.wandb_mode, project=config.wandb_project,
                      entity=config.wandb_entity, name=config.run_name, run_id=state.wandb_run_id,
                      enabled=rank == 0, metrics_file=out_dir / METRICS_FILE)
    handed = tracker.sweep_values(config.to_dict())
    if handed:  # under a W&B agent, wandb.config must be what trains; with ${args} in the command it always is
        tracker.finish(exit_code=2)
        key, value = next(iter(handed.items()))
        raise ConfigError(f"the W&B sweep hands this run {key}={value!r} but the command line says "
                          f"{getattr(config, key)!r}; put ${{args}} in the sweep's command")
    state.wandb_run_id = tracker.id or state.wandb_run_id
    run = Run(config, state, out_dir, device, train_set, test_set, test_indices, recipe, net, eval_net, tracker,
              probes, rank, world_size, first_epoch=state.epoch + 1, data=data)
    start_stream(run)
    return run


def start_stream(run: Run) -> None:
    """Start ``metrics.jsonl`` and W&B: a resumed run's finished epochs (and probe images) again, a new run's
    probes at epoch 0 (the initial model)."""
    probes, state = run.probes, run.state
    rows = ([{"epoch": 0, **probes.row(0)}] if probes and 0 in probes.epochs else []) + state.history
    run.tracker.continue_from(rows, [probes.images_for(int(row["epoch"])) for row in rows] if probes else None,
                              leave_open=bool(state.history) and state.epoch >= run.config.epochs)  # to the finish
    if probes and not probes.epochs:
        probes.observe(run.recipe.evaluated, 0)
        state.probes = probes.to_dict()
        run.tracker.log_epoch({"epoch": 0, **probes.row(0)}, probes.images_for(0))


def restore(recipe: Recipe, checkpoint: dict, source: str) -> None:
    """Load a ``last.pt`` into the recipe: weights (and their EMA), optimizer, schedule and random generators."""
    if recipe.ema is not None:  # ``model`` holds the EMA (what was evaluated), ``train_model`` the trained weights
        if not isinstance(checkpoint.get("train_model"), dict):
            raise CheckpointError(f"checkpoint {source!r} cannot be resumed: it has no train_model for --ema")
        load_model_state(recipe.model, {**checkpoint, "model": checkpoint["train_model"]}, source)
        load_model_state(recipe.ema.module, checkpoint, source)
    else:
        load_model_state(recipe.model, checkpoint, source)
    try:
        recipe.optimizer.load_state_dict(checkpoint["optimizer"])
        recipe.scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        generator = recipe.train_loader.generator
        generator.set_state(checkpoint["rng"]["loader"].to(generator.get_state().device))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {source!r} cannot be resumed: its optimizer, schedule or random state "
                              f"does not fit ({type(exc).__name__})") from None


def checkpoint_of(run: Run) -> dict[str, Any]:
    """``last.pt``'s content: the model's (``best.pt`` holds only that) plus what resume needs."""
    generator = run.recipe.train_loader.generator
    return {
        **model_checkpoint(run),
        **({"train_model": unwrap(run.recipe.model).state_dict()} if run.recipe.ema is not None else {}),
        "optimizer": run.recipe.optimizer.state_dict(),
        "scheduler": run.recipe.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "loader": generator.get_state().cpu()},
        "state": run.state.to_dict(),
    }


def model_checkpoint(run: Run) -> dict[str, Any]:
    """What a user of the model needs: the evaluated weights (the EMA with ``--ema``), config, classes and the
    epoch's metrics (``best.pt``)."""
    return {"model": unwrap(run.recipe.evaluated).state_dict(), "config": run.config.to_dict(),
            "epoch": run.state.epoch, "metrics": run.state.history[-1], "classes": run.train_set.classes,
            "run_uid": run.state.run_uid, "data": run.data}


def recipe_words(config: Config, recipe: Recipe) -> str:
    """What the recipe resolved to, for the start line (W&B's config holds the same values)."""
    sizes = recipe.resolutions or [recipe.train_loader.size]
    ramp = sum(size < sizes[-1] for size in sizes)
    words = [f"batch {config.batch_size}", f"lr {config.lr:.4g}", f"{config.warmup_epochs:g} warm-up epochs",
             f"label smoothing {config.label_smoothing:g}", f"{config.flip} flips"]
    if config.stem_init == "whiten":
        words.append("whitened stem")
    if config.ema:
        words.append(f"EMA {config.ema:g}")
    if ramp:
        words.append(f"{sizes[0]}->{sizes[-1]} px over the first " + (f"{ramp} epochs" if ramp > 1 else "epoch"))
    return ", ".join(words)


def saved(state: RunState) -> str:
    """What the run has saved, in words."""
    if state.epoch == 0:
        return "no epoch had finished"
    return ("epoch 1 is saved" if state.epoch == 1 else f"epochs 1-{state.epoch} are saved")


def diverged_weights(model: nn.Module, eval_loss: float) -> str:
    """Why the evaluated weights are unusable, in words, or "" when they are fine: a non-finite evaluation loss, or a
    non-finite parameter or buffer (a BN running statistic blown up by the last update)."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        return f"non-finite values in {bad[0]}" + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")
    if not math.isfinite(eval_loss):
        return f"the evaluation loss is {eval_loss}"
    return ""


# ---------------------------------------------------------------------------------------------------------------------
# The epoch loop


def train_epochs(run: Run) -> None:
    """Train, evaluate, save and log every epoch left; the epoch in progress is abandoned by a stop."""
    config, state = run.config, run.state
    show_bar = sys.stderr.isatty() and run.rank == 0
    for epoch in range(state.epoch + 1, config.epochs + 1):
        run.phase = f"epoch {epoch}"
        run.recipe.epochs_done = epoch - 1  # the epoch's resolution and flip side, also after a resume
        try:
            train = run.recipe.train_epoch(run.net, progress=show_bar, desc=f"epoch {epoch}/{config.epochs}")
        except NonFiniteLossError as exc:
            raise TrainingError(f"epoch {epoch}: {exc} (try a lower --lr); {saved(state)}"
                                + ("; the last good checkpoint is kept" if state.epoch else "")) from None
        if run.world_size > 1 and run.device.type != "cuda":  # per-rank BN statistics: evaluate (and save) rank 0's
            for buffer in run.recipe.evaluated.buffers():
                dist.broadcast(buffer, src=0)
        val = run.recipe.evaluate(run.eval_net, tta=config.tta)
        diverged = diverged_weights(run.recipe.evaluated, val["loss"])
        if diverged:  # the training loss is checked per step; the last update can still leave unusable weights
            raise TrainingError(f"epoch {epoch}: the weights diverged ({diverged}; try a lower --lr); {saved(state)}"
                                + ("; the last good checkpoint is kept" if state.epoch else ""))
        row, images = epoch_row(epoch, train, val), None
        if run.probes:
            run.probes.observe(run.recipe.evaluated, epoch)
            row, images = {**row, **run.probes.row(epoch)}, run.probes.images_for(epoch)
        with stops_deferred():  # the checkpoint first, then the row: W&B never shows an epoch no checkpoint holds
            previous = saved(state)
            is_best = state.record(row, train)
            if run.probes:
                state.probes = run.probes.to_dict()
            save_epoch(run, row, images, is_best, previous)
            run.say(f"epoch {epoch}/{config.epochs}  train loss {row['train/loss']:.4f} acc {row['train/acc']:.4f}  "
                    f"val loss {row['val/loss']:.4f} acc {row['val/acc']:.4f}  lr {row['lr']:.4g}  "
                    f"{row['epoch_seconds']:.1f}s  {row['train/images_per_second']:.0f} img/s")
            # what a stop held until here interrupts
            run.phase = f"epoch {epoch + 1}" if epoch < config.epochs else "explain" if config.explain_samples \
                else "finish"


def save_epoch(run: Run, row: dict[str, float], images: dict | None, is_best: bool, previous: str) -> None:
    """The epoch's files — ``best.pt`` (when best), ``last.pt`` and its ``metrics.jsonl`` row — all or none, then its
    W&B row; rank 0 writes, the other ranks have nothing to write."""
    files = {}
    if run.rank == 0:
        files = {run.out_dir / "best.pt": checkpoint_bytes(model_checkpoint(run))} if is_best else {}
        files[run.out_dir / "last.pt"] = checkpoint_bytes(checkpoint_of(run))
    try:  # the end of training's explain row joins the last epoch's W&B row
        run.tracker.log_epoch(row, images, commit=run.state.epoch < run.config.epochs, files=files)
    except OSError as exc:
        run.state.epoch -= 1  # not saved
        hint = (f"; make room and continue with --resume {run.out_dir / 'last.pt'}" if run.state.epoch else
                "; make room and start it again")
        raise TrainingError(f"epoch {run.state.epoch + 1}: saving its checkpoint in {run.out_dir} failed "
                            f"({exc.strerror or exc}); {previous}{hint}") from None


# ---------------------------------------------------------------------------------------------------------------------
# The finish: explain the final model, summarize, log the model


def finish(run: Run) -> dict[str, Any]:
    """Explain the final model's mistakes, write ``summary.json``, log ``best.pt`` as the model artifact."""
    config, state = run.config, run.state
    run.phase = "explain"
    explained = {}
    try:
        if config.explain_samples:
            explained = explain_model(run.recipe.evaluated, run.test_set, ExplainSettings.from_config(config),
                                      out_dir=run.out_dir, tracker=run.tracker, device=run.device,
                                      amp=run.recipe.amp, indices=run.test_indices, epoch=state.epoch, commit=False)
            if "trust_line" in explained:
                line = explained["trust_line"]
                print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)
            if "label_issues_line" in explained:  # summary.json's explain.label_issues(_checked) are in `explained`
                print(explained["label_issues_line"], flush=True)
                for note in explained["label_issues_notes"]:
                    print(f"warning: label issues: {note}", file=sys.stderr, flush=True)
        if run.probes:
            write_probes(run.probes, run.out_dir, run.tracker, pictures=bool(config.explain_samples))
    except OSError as exc:  # a full disk while writing the pictures: the checkpoints are whole, say so
        raise TrainingError(f"the explain step could not write in {run.out_dir} ({exc.strerror or exc}); "
                            f"{saved(state)} and best.pt is the model, summary.json was not written; explain it "
                            f"later with python explain/run.py --checkpoint {run.out_dir / 'best.pt'}") from None
    run.phase = "finish"
    last = state.history[-1]
    summary = {
        "test_acc": last["val/acc"],
        "test_acc_no_tta": last["val/acc_no_tta"],
        "best_test_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "tta": config.tta,
        "epochs": state.epoch,
        "train_seconds": round(state.loop_seconds, 3),  # whole epochs, the per-epoch evaluation included
        "train_step_seconds": round(state.train_seconds, 3),  # the training steps alone (airbench's timer's scope)
        "train_images_per_second": round(state.train_images / max(state.train_seconds, 1e-9), 1),
        "compile_seconds": compile_overhead([r["epoch_seconds"] for r in state.history[run.first_epoch - 1:]])
        if config.compile else 0.0,
        "params": sum(p.numel() for p in run.recipe.model.parameters()),
        "device": str(run.device),
        "wandb_run_id": run.tracker.id or state.wandb_run_id or None,
        "wandb_run_dir": run.tracker.dir,
        "wandb_staging_dir": run.tracker.staging_dir,  # with wandb_run_dir, what `wandb sync` needs
        "explain": explain_summary(explained),
    }
    run.tracker.log({"epoch": state.epoch})  # commit the last epoch's row, which the explain step joined
    run.tracker.summary({"best_val_acc": state.best_acc, "best_epoch": state.best_epoch,
                         "train_seconds": summary["train_seconds"], "compile_seconds": summary["compile_seconds"],
                         # the counts, again after the commit: the row's table explain/label_issues shares the key
                         **{f"explain/{key}": explained[key] for key in LABEL_KEYS if key in explained}})
    if config.keep_checkpoints != "none":
        run.tracker.log_model(run.out_dir / "best.pt", aliases=["best", "latest"],
                              metadata={"config": config.to_dict(), "metrics": state.history[state.best_epoch - 1],
                                        "epoch": state.best_epoch, "classes": run.train_set.classes})
    try:
        write_json(run.out_dir / "config.json", config.to_dict())  # the resolved recipe, as W&B's config holds it
        write_json(run.out_dir / "summary.json", summary)
    except OSError as exc:  # a full disk at the very end: the checkpoints are whole, say so
        raise TrainingError(f"writing summary.json in {run.out_dir} failed ({exc.strerror or exc}); {saved(state)}, "
                            f"best.pt is the model; summary.json was not written; finish the run with --resume "
                            f"{run.out_dir / 'last.pt'}") from None
    run.phase = "closing"
    keep_checkpoints(run)
    run.tracker.finish()
    global RUN_ENDED
    run.phase, RUN_ENDED = "ended", True  # before the last line: a stop from here on finds the run over
    run.say(f"done: test acc {summary['test_acc']:.4f} (best {summary['best_test_acc']:.4f} at epoch "
            f"{summary['best_epoch']}), {summary['train_seconds']:.1f}s; wrote {run.out_dir}/summary.json")
    return summary


def keep_checkpoints(run: Run) -> None:
    """What a finished run keeps (``--keep_checkpoints``): last.pt's optimizer state and weights are of no more use
    (a finished run cannot be continued), so it becomes the run's record — config, state, data fingerprint, metrics,
    under 100 kB — which ``--resume`` still recognizes as finished; ``none`` removes best.pt too. A failure here loses
    nothing: the files stay as they were, with a warning."""
    keep = run.config.keep_checkpoints
    if keep == "all":
        return
    record = {**{k: v for k, v in model_checkpoint(run).items() if k != "model"}, "state": run.state.to_dict(),
              "finished": True}
    try:
        save_checkpoint(run.out_dir / "last.pt", record)
        if keep == "none":
            (run.out_dir / "best.pt").unlink(missing_ok=True)
    except OSError as exc:
        print(f"warning: --keep_checkpoints {keep}: could not slim the checkpoints in {run.out_dir} "
              f"({exc.strerror or exc}); they are whole, the run is complete", file=sys.stderr, flush=True)


def stop_message(run: Run | None, state: RunState, resumed: str) -> str:
    """What a stop kept, in one line, for the phase it interrupted."""
    phase = run.phase if run else "start-up"
    if phase == "start-up":
        return "during start-up; " + (f"{resumed} is unchanged" if resumed else "nothing was saved")
    last = str(run.out_dir / "last.pt")
    if phase.startswith("epoch"):
        resume = f"; resume with --resume {last}" if state.epoch else ""
        return f"during {phase}: that epoch was abandoned; {saved(state)}{resume}"
    if phase == "explain":
        return f"during the explain step: {saved(state)}; finish the run with --resume {last}"
    if phase == "closing":
        return f"while closing the run: {saved(state)} and summary.json is written; the run is complete"
    if phase == "ended":
        return "after the run ended; nothing was lost"
    return f"while finishing: {saved(state)}; summary.json was not written; finish the run with --resume {last}"


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def fit(config: Config, given: set[str]) -> dict[str, Any]:
    """Train (or resume) one run end to end; returns the summary written to ``summary.json`` (empty on ranks > 0).

    Under ``torchrun --nproc_per_node=N`` this runs on every rank: each trains on its slice of every global batch
    (DDP averages the gradients, SyncBatchNorm on GPUs), metrics are all-reduced, and only rank 0 prints, logs to
    W&B, writes checkpoints and explains.
    """
    rank, world_size = init_distributed()
    out_dir, source, run, state = None, None, None, RunState()
    try:
        if config.wandb_mode != "disabled":  # now, not after the data loaded
            check_wandb_environment()
        # ---- the run: new, or the checkpoint's config and state ----
        if config.resume == "auto":
            config.resume = find_last_checkpoint(config)
            if rank == 0:
                found = f"continuing {config.resume}" if config.resume else "no last.pt found, new run"
                print(f"--resume auto: {found}", flush=True)
        config, checkpoint = resume_config(config, given)
        state = resume_state(checkpoint, config.resume)
        if checkpoint is not None and rank == 0:
            print(f"resuming {config.resume}: {saved(state)}; " + (
                f"continuing at epoch {state.epoch + 1} of {config.epochs}" if state.epoch < config.epochs else
                "its finish (explain step, summary.json, W&B model) was cut short: finishing it"), flush=True)
        config.run_name = config.run_name or agree(time.strftime("%Y%m%d-%H%M%S"))
        config.out_dir = config.out_dir or str(Path("runs") / config.run_name)
        check_model_name(config.model)
        if rank == 0 and checkpoint is not None:  # continued elsewhere: the checkpoint's run must not be running
            source = CheckpointFolderLock(config.resume, config.out_dir)
        if rank == 0:
            out_dir = OutDir(config.out_dir, state.run_uid, resuming=checkpoint is not None).open()
        run = set_up(config, checkpoint, state, rank, world_size, given)
        computes = precision_name(run.recipe.amp, run.recipe.channels_last) + cpu_note(run)
        run.say(f"{config.model}: {sum(p.numel() for p in run.recipe.model.parameters()):,} parameters on "
                f"{run.device} ({computes}); {len(run.train_set):,} train / {len(run.test_set):,} test images, "
                f"{len(run.train_set.classes)} classes; {recipe_words(config, run.recipe)}; out_dir {run.out_dir}"
                + (f"; {world_size} processes (DDP)" if world_size > 1 else ""))
        # ---- train ----
        train_epochs(run)
        # ---- finish (rank 0 explains, summarizes and logs the model) ----
        return finish(run) if rank == 0 else {}
    except Stopped as stop:
        with stops_ignored():
            finish_active_run(stop.wandb_exit_code)
        raise stop.explained(stop_message(run, state, config.resume)) from None
    except BaseException:
        with stops_ignored():
            finish_active_run(1)
        raise
    finally:
        with stops_ignored():  # releasing the locks is quick and must happen; a stop now has nothing left to stop
            if out_dir is not None:
                out_dir.close(keep=state.epoch > 0)
            if source is not None:
                source.close()
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()



def cpu_note(run: Run) -> str:
    """Why ``--precision auto`` chose what it did on the CPU, or that ``--precision bf16`` is emulated there (nothing
    elsewhere)."""
    if run.device.type != "cpu" or run.config.precision == "fp32":
        return ""
    if run.config.precision == "bf16":
        return "" if cpu_bf16_native() else f": {EMULATED_BF16}"
    return (": this CPU runs bf16 natively" if cpu_bf16_native()
            else ": this CPU has no native bf16 (--precision bf16 would be emulated, slower)")

def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, train, and turn user errors into one ``error:`` line and exit status 2."""
    global RUN_ENDED
    RUN_ENDED = False  # a second main() in one process (a notebook, a test) starts a run not yet ended
    ended = False  # a stop after fit() returned finds the run over (one between fit's return and this flag too)
    try:  # Stopped is caught outside the block, so a stop that lands while the block exits is caught as well
        with stops_raise():
            try:
                config, given = parse_args(argv)
                fit(config, given)
                ended = True
            except (*USER_ERRORS, TrainingError) as exc:
                print(f"error: {one_line(str(exc))}", file=sys.stderr)
                return 2
            except NothingToResume as exc:
                print(one_line(str(exc)))
                return 0
    except Stopped as stop:
        ended = ended or RUN_ENDED
        what = str(stop) or ("after the run ended; nothing was lost" if ended else
                             "during start-up; nothing was saved")
        if os.environ.get("RANK", "0") == "0":  # under torchrun one process speaks for the run
            print(f"stopped: {stop.signal_name} {one_line(what)}", file=sys.stderr)
        return exit_status(stop)
    return 0


if __name__ == "__main__":
    # A W&B service inherited from the parent process (a notebook, a test runner) would outlive a killed run and keep
    # its id "in use", so a resume could never reopen it: a training process starts a service of its own.
    os.environ.pop("WANDB_SERVICE", None)
    status = 0

    def _stopped_while_exiting(signum: int, frame: object) -> None:  # W&B's service may take a moment to shut down
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {signal.Signals(signum).name} after the run ended; nothing was lost",
                  file=sys.stderr, flush=True)
        os._exit(status)

    _set_stop_handlers(_stopped_while_exiting)  # main's stops_raise() puts it back when main returns
    status = main()
    sys.exit(status)
