"""Train a timm classifier on CIFAR-10 (or any image folder) with every epoch tracked in W&B.

    python train/run.py                                   # the default 20-epoch recipe on ./data
    python train/run.py --data_dir ~/cifar10-jpeg --epochs=2 --train_subset=2000 --test_subset=1000
    python train/run.py --config my.yaml --lr 0.1         # file of defaults, command line wins
    python train/run.py --resume runs/NAME/last.pt        # continue an interrupted run, same W&B run id

Writes ``out_dir`` (default ``runs/<run_name>``): ``last.pt``, ``best.pt``, ``summary.json`` and the explain
pictures, plus a W&B run (offline under ``$WANDB_DIR/wandb`` when there are no W&B credentials).
Bad input exits with status 2 and one ``error:`` line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python train/run.py`: import the repo's packages, not train/*.py as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import timm.utils
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from explain.report import check_cam_settings, explain_model
from train.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint, stops_deferred, unwrap
from train.config import Config, ConfigError, config_from_dict, parse_args
from train.data import DataError, balanced_subset, load_data
from train.engine import NonFiniteLossError, build_recipe, compile_overhead, evaluate, resolve_device, train_one_epoch
from train.tracking import Tracker, epoch_row

USER_ERRORS = (ConfigError, DataError, CheckpointError)
# What a resumed run may change; everything else (data, model, schedule, seed) is the checkpoint's.
RESUME_OVERRIDABLE = {"resume", "device", "precision", "compile", "eval_batch_size", "out_dir", "wandb_mode",
                      "wandb_project", "wandb_entity", "explain_samples", "cam_method", "cam_layer"}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); finished checkpoints are kept."""


class Stopped(Exception):
    """SIGTERM (pre-emption) or Ctrl-C: the epoch in progress is abandoned, finished epochs stay saved."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped("", signal.Signals(signum).name)


def prepare_out_dir(config: Config) -> Path:
    """Create ``out_dir`` and check it can be written, without touching a run that is already there."""
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out_dir {config.out_dir!r} is a file, not a folder")
    if not config.resume and (out_dir / "last.pt").exists():
        raise ConfigError(f"--out_dir {config.out_dir!r} already holds a run; continue it with "
                          f"--resume {out_dir / 'last.pt'} or choose another --out_dir/--run_name")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"  # one per process: torchrun ranks check it side by side
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out_dir {config.out_dir!r} is not writable ({exc.strerror or exc})") from None
    return out_dir


def find_last_checkpoint(config: Config) -> str:
    """``--resume auto``: the newest ``last.pt`` of this ``out_dir`` (or ``runs/<run_name>``, or any run under
    ``runs/`` when neither is given); empty when there is none, so the same command starts or continues a run."""
    if config.out_dir:
        candidates = [Path(config.out_dir) / "last.pt"]
    elif config.run_name:
        candidates = [Path("runs") / config.run_name / "last.pt"]
    else:
        candidates = list(Path("runs").glob("*/last.pt"))
    existing = [path for path in candidates if path.is_file()]
    return str(max(existing, key=lambda path: path.stat().st_mtime)) if existing else ""


def init_distributed() -> tuple[int, int]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join the process group: NCCL for CUDA tensors, gloo for CPU ones.

    Returns ``(rank, world_size)``; ``(0, 1)`` for a plain single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
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


def fit(config: Config, given: set[str]) -> dict:
    """Train (or resume) one run end to end; returns the summary written to ``summary.json`` (empty on ranks > 0).

    Under ``torchrun --nproc_per_node=N`` this runs on every rank: each trains on its slice of every global batch
    (DDP averages the gradients, SyncBatchNorm on GPUs), metrics are all-reduced, and only rank 0 prints, logs to
    W&B, writes checkpoints and explains.
    """
    rank, world_size = init_distributed()
    try:
        return _fit(config, given, rank, world_size)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _fit(config: Config, given: set[str], rank: int, world_size: int) -> dict:
    say = print if rank == 0 else lambda *args, **kwargs: None
    # ---- resume: the checkpoint's config, overridden by the flags given explicitly now -------------------------
    resumed = None
    if config.resume == "auto":
        config.resume = find_last_checkpoint(config)
        say(f"--resume auto: {'continuing ' + config.resume if config.resume else 'no last.pt found, new run'}")
    if config.resume:
        resumed = load_checkpoint(config.resume)
        stored = resumed["config"]
        for key in sorted(given - RESUME_OVERRIDABLE):
            if getattr(config, key) != stored.get(key):
                raise ConfigError(f"--{key} cannot change when resuming (the checkpoint has {stored.get(key)!r}); "
                                  f"start a new run instead")
        config = config_from_dict({**stored, **{k: getattr(config, k) for k in given}})
    config.run_name = config.run_name or agree(time.strftime("%Y%m%d-%H%M%S"))
    config.out_dir = config.out_dir or str(Path("runs") / config.run_name)
    out_dir = prepare_out_dir(config)

    # ---- device and seeds -------------------------------------------------------------------------------------
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {config.device!r}: CUDA is not available on this machine")
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK)
    timm.utils.random_seed(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible matmuls
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not config.deterministic  # autotuned kernels are fastest but may vary

    # ---- data: decoded once, resident on the device ------------------------------------------------------------
    train_set, test_set = load_data(config.data_dir)
    train_set = train_set.subset(balanced_subset(train_set.labels, config.train_subset, config.seed))
    test_indices = balanced_subset(test_set.labels, config.test_subset, config.seed)  # positions in the full test set
    test_set = test_set.subset(test_indices)

    # ---- loaders, model, optimizer, schedule ------------------------------------------------------------------
    recipe = build_recipe(config, train_set, test_set, device, rank=rank, world_size=world_size)
    train_loader, test_loader, model = recipe.train_loader, recipe.test_loader, recipe.model
    optimizer, scheduler, amp, channels_last = recipe.optimizer, recipe.scheduler, recipe.amp, recipe.channels_last
    if config.explain_samples:  # a CAM typo must fail now, not after hours of training
        try:
            check_cam_settings(model, config.cam_method, config.cam_layer)
        except ValueError as exc:
            raise ConfigError(f"--cam_method/--cam_layer: {exc}") from None

    # ---- resume state ------------------------------------------------------------------------------------------
    progress = {"epoch": 0, "best_acc": -1.0, "best_epoch": 0, "train_seconds": 0.0, "loop_seconds": 0.0,
                "train_images": 0}
    run_id = None
    if resumed:
        load_model_state(model, resumed, config.resume)
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["rng"]["torch"])
        train_loader.generator.set_state(resumed["rng"]["loader"].to(train_loader.generator.get_state().device))
        progress.update(resumed["progress"])
        run_id = resumed.get("wandb_run_id")
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world_size > 1 else model
    net = torch.compile(net) if config.compile else net
    # Evaluation bypasses DDP: shards may take different numbers of batches, and DDP's forward is a collective.
    eval_net = (torch.compile(model) if config.compile else model) if world_size > 1 else net
    params = sum(p.numel() for p in model.parameters())

    # ---- tracking ----------------------------------------------------------------------------------------------
    tracker = Tracker(config.to_dict(), mode=config.wandb_mode, project=config.wandb_project,
                      entity=config.wandb_entity, name=config.run_name, run_id=run_id, enabled=rank == 0)
    handed = tracker.sweep_values(config.to_dict())
    if handed:  # under a W&B agent, wandb.config must be what trains; with ${args} in the command it always is
        tracker.finish(exit_code=2)
        key, value = next(iter(handed.items()))
        raise ConfigError(f"the W&B sweep hands this run {key}={value!r} but the command line says "
                          f"{getattr(config, key)!r}; put ${{args}} in the sweep's command")
    history = list(resumed.get("history", [])) if resumed else []  # every finished epoch's log row
    if history and tracker.mode == "offline":
        # Offline W&B cannot reopen a run, and a killed process may not have flushed its last rows: the resumed
        # part starts with the finished epochs again (same steps), so it alone holds the whole run.
        for old_row in history:
            tracker.log(old_row)
    say(f"{config.model}: {params:,} parameters on {device} ({'bf16' if amp else 'fp32'}); "
        f"{len(train_set):,} train / {len(test_set):,} test images, {len(train_set.classes)} classes; "
        f"out_dir {out_dir}" + (f"; {world_size} processes (DDP)" if world_size > 1 else ""), flush=True)

    # ---- epochs ------------------------------------------------------------------------------------------------
    show_bar = sys.stderr.isatty() and rank == 0
    row = resumed["metrics"] if resumed else {}
    epoch_seconds = []  # this process's epochs: the first one compiles under --compile
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stopped)  # pre-emption stops like Ctrl-C; saves are atomic
    try:
        for epoch in range(progress["epoch"] + 1, config.epochs + 1):
            try:
                train_stats = train_one_epoch(net, train_loader, optimizer, scheduler, recipe.train_loss,
                                              device=device, amp=amp, channels_last=channels_last, progress=show_bar,
                                              desc=f"epoch {epoch}/{config.epochs}")
            except NonFiniteLossError as exc:
                tracker.finish(exit_code=1)
                kept = "the last good checkpoint is kept" if (out_dir / "last.pt").exists() else "no epoch had finished"
                raise TrainingError(f"epoch {epoch}: {exc} (try a lower --lr); {kept}") from None
            if world_size > 1 and device.type != "cuda":  # per-rank BN statistics: evaluate (and save) rank 0's
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
            val = evaluate(eval_net, test_loader, recipe.eval_loss, device=device, amp=amp,
                           channels_last=channels_last, tta=config.tta)
            row = epoch_row(epoch, train_stats, val)
            with stops_deferred():  # once W&B has the epoch's row, a stop waits until its checkpoint is saved
                tracker.log(row, commit=not (epoch == config.epochs and config.explain_samples))  # explain joins it
                say(f"epoch {epoch}/{config.epochs}  train loss {row['train/loss']:.4f} acc {row['train/acc']:.4f}  "
                    f"val loss {row['val/loss']:.4f} acc {row['val/acc']:.4f}  lr {row['lr']:.4g}  "
                    f"{row['epoch_seconds']:.1f}s  {row['train/images_per_second']:.0f} img/s", flush=True)
                progress["epoch"] = epoch
                history.append(row)
                epoch_seconds.append(row["epoch_seconds"])
                progress["train_seconds"] += train_stats["seconds"]
                progress["loop_seconds"] += row["epoch_seconds"]
                progress["train_images"] += train_stats["images"]
                is_best = val["acc"] > progress["best_acc"]
                if is_best:
                    progress["best_acc"], progress["best_epoch"] = val["acc"], epoch
                state = {
                    "model": unwrap(model).state_dict(), "config": config.to_dict(), "epoch": epoch, "metrics": row,
                    "classes": train_set.classes, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "loader": train_loader.generator.get_state().cpu()},
                    "progress": dict(progress), "history": history, "wandb_run_id": tracker.id or run_id or "",
                }
                if rank == 0:
                    if is_best:  # best first: whenever last.pt exists, so does a best.pt
                        save_checkpoint(out_dir / "best.pt", state)
                    save_checkpoint(out_dir / "last.pt", state)
    except (Stopped, KeyboardInterrupt) as exc:
        name = exc.signal_name if isinstance(exc, Stopped) else "SIGINT"
        tracker.finish(exit_code=128 + signal.Signals[name].value)
        saved = (f"epochs 1-{progress['epoch']} are saved; resume with --resume {out_dir / 'last.pt'}"
                 if progress["epoch"] else "no epoch had finished")
        raise Stopped(f"{name} during epoch {progress['epoch'] + 1}: that epoch was abandoned; {saved}", name) from None

    if rank > 0:  # rank 0 explains, summarizes and logs the model
        return {}

    # ---- explain the final model's mistakes: W&B table + plots, PNGs in out_dir ----------------------------------
    explained = {}
    if config.explain_samples:
        try:
            explained = explain_model(model, test_set, out_dir=out_dir, tracker=tracker,
                                      samples=config.explain_samples, cam_method=config.cam_method,
                                      cam_layer=config.cam_layer, device=device, amp=amp,
                                      batch_size=config.eval_batch_size, indices=test_indices, epoch=progress["epoch"])
        except (Stopped, KeyboardInterrupt) as exc:
            name = exc.signal_name if isinstance(exc, Stopped) else "SIGINT"
            tracker.finish(exit_code=128 + signal.Signals[name].value)
            raise Stopped(f"{name} during the explain step: all {progress['epoch']} epochs are saved; explain them "
                          f"with python explain/run.py --checkpoint {out_dir / 'best.pt'}", name) from None

    # ---- summary and the model artifact ------------------------------------------------------------------------
    summary = {
        "test_acc": row.get("val/acc"),
        "test_acc_no_tta": row.get("val/acc_no_tta"),
        "best_test_acc": progress["best_acc"],
        "best_epoch": progress["best_epoch"],
        "tta": config.tta,
        "epochs": progress["epoch"],
        "train_seconds": progress["loop_seconds"],
        "train_images_per_second": progress["train_images"] / max(progress["train_seconds"], 1e-9),
        "compile_seconds": compile_overhead(epoch_seconds) if config.compile else 0.0,
        "params": params,
        "device": str(device),
        "wandb_run_id": tracker.id or run_id,
        "wandb_run_dir": tracker.dir,
        "explain": {k: v for k, v in explained.items() if not k.endswith("_png")},
    }
    tracker.summary({"best_val_acc": progress["best_acc"], "best_epoch": progress["best_epoch"],
                     "train_seconds": summary["train_seconds"], "compile_seconds": summary["compile_seconds"]})
    best = load_checkpoint(out_dir / "best.pt")
    tracker.log_model(out_dir / "best.pt", aliases=["best", "latest"],
                      metadata={"config": best["config"], "metrics": best["metrics"], "epoch": best["epoch"],
                                "classes": best["classes"]})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    tracker.finish()
    print(f"done: test acc {summary['test_acc']:.4f} (best {summary['best_test_acc']:.4f} at epoch "
          f"{summary['best_epoch']}), {summary['train_seconds']:.1f}s; wrote {out_dir}/summary.json", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, train, and turn user errors into one ``error:`` line and exit status 2."""
    try:
        config, given = parse_args(argv)
        fit(config, given)
    except (*USER_ERRORS, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:  # a requested stop is a clean exit; Ctrl-C keeps the shell's 130
        print(f"stopped: {exc}", file=sys.stderr)
        return 130 if exc.signal_name == "SIGINT" else 0
    return 0


if __name__ == "__main__":
    # A W&B service inherited from the parent process (a notebook, a test runner) would outlive a killed run and keep
    # its id "in use", so a resume could never reopen it: a training process starts a service of its own.
    os.environ.pop("WANDB_SERVICE", None)
    sys.exit(main())
