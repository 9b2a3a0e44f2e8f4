"""Explain a trained checkpoint: its test-set mistakes, or any images of yours; a W&B run (``job_type="explain"``).

    python explain/run.py --checkpoint runs/NAME/best.pt
    python explain/run.py --checkpoint best.pt --data_dir ~/cifar10-jpeg --explain_samples 32 --cam_method gradcampp
    python explain/run.py --checkpoint best.pt --compare gradcam,gradcampp,layercam,scorecam
    python explain/run.py --checkpoint best.pt --images cat.jpg holiday/ --target_class dog

On the test set: the ``explain/*`` tables and plots of :mod:`explain.report`, ``misclassified.png``,
``gradcam.png``, ``confusion_matrix.png`` and the trust figures (``faithfulness.png``, ``sanity.png``) in
``--out_dir`` (default: the checkpoint's folder); ``--compare`` ranks CAM methods on the same images. With
``--images``: one line per image, ``images.png`` and ``images.json`` (default folder: ``<checkpoint folder>/images``).
The data, the test subset and the CAM settings default to the checkpoint's config; flags override them. Bad input
exits with status 2 and one ``error:`` line; SIGTERM and Ctrl-C stop cleanly with a ``stopped:`` line.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # the imports below take seconds: a stop meanwhile ends quietly, not with a traceback
    def _stopped_while_starting(signum: int, frame: object) -> None:
        print(f"stopped: {signal.Signals(signum).name} during start-up; nothing was written", file=sys.stderr)
        sys.exit(130 if signum == signal.SIGINT else 0)

    for _sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_sig) is not signal.SIG_IGN:  # nohup, `cmd &`: an ignored signal stays ignored
            signal.signal(_sig, _stopped_while_starting)

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python explain/run.py`: import the repo's packages, not explain/*.py as top-level
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

from explain.cam import CAM_METHODS
from explain.report import check_cam_settings, explain_images, explain_model
from train.checkpoint import CheckpointError, load_checkpoint, load_model_state
from train.config import Config, ConfigError, build_parser, closest, coerce, config_from_dict, parse_flags
from train.data import DataError, balanced_subset, load_data, read_images
from train.engine import amp_dtype, resolve_device
from train.stops import Stopped, exit_status, stops_ignored, stops_raise
from train.tracking import Tracker, finish_active_run

USER_ERRORS = (ConfigError, DataError, CheckpointError)


@dataclass
class ExplainOptions:
    """What to explain"""

    checkpoint: str
    """A best.pt or last.pt written by train/run.py."""
    images: list[str] = field(default_factory=list)
    """Explain these image files and folders (any size, any mode) instead of the test set's mistakes."""
    target_class: str = ""
    """With --images: the class whose CAM is shown; empty = each image's top prediction."""
    skip_bad: bool = False
    """With --images: skip the files of a folder that are not readable images, listing them, instead of stopping."""
    compare: str = ""
    """Comma-separated CAM methods to compare on the explained mistakes, most faithful first (e.g. gradcam,layercam)."""


# ---- flags ---------------------------------------------------------------------------------------------------------
# The training flags that apply here, with their Config docstrings as help. The data, subset, seed and CAM settings
# come from the checkpoint's config unless given; these start afresh (the machine that explains is not the one that
# trained, and a run trained with --explain_samples 0 still gets explained here):
FRESH = ("explain_samples", "device", "precision", "eval_batch_size", "wandb_mode", "out_dir", "run_name")
FROM_CHECKPOINT = ("data_dir", "test_subset", "cam_method", "cam_layer", "trust", "wandb_project", "wandb_entity")
DEFAULTS_SHOWN = {**{name: "the checkpoint's" for name in FROM_CHECKPOINT},
                  "out_dir": "the checkpoint's folder (with --images: its images/ subfolder)",
                  "run_name": "the training run's name + '-explain'"}


def parser() -> argparse.ArgumentParser:
    """explain/run.py's flags: its own and the training flags that apply, help from their docstrings."""
    return build_parser("explain/run.py", "Explain a checkpoint's mistakes, or any images, with CAMs, tracked in W&B.",
                        [(ExplainOptions, None), (Config, FROM_CHECKPOINT + FRESH)], DEFAULTS_SHOWN)


def parse_args(argv: Sequence[str] | None = None) -> tuple[ExplainOptions, dict[str, Any]]:
    """explain/run.py's own options and the training flags given (``--key=value``, ``--key value``, dashes)."""
    given = parse_flags(parser(), sys.argv[1:] if argv is None else argv)
    own = {f.name: coerce(f.name, given.pop(f.name), ExplainOptions) for f in fields(ExplainOptions)
           if f.name in given}
    options = ExplainOptions(**own)
    for method in filter(None, (m.strip() for m in options.compare.split(","))):
        if method not in CAM_METHODS:
            raise ConfigError(f"--compare: unknown CAM method {method!r}{closest(method, CAM_METHODS, prefix='')}; "
                              f"valid methods: {', '.join(CAM_METHODS)}")
    if not options.images and (options.target_class or options.skip_bad):
        raise ConfigError("--target_class and --skip_bad apply to --images")
    return options, given


@dataclass
class Loaded:
    """A checkpoint's model, ready to explain, and the effective settings."""

    config: Config
    state: dict[str, Any]
    model: torch.nn.Module
    device: torch.device
    layers: list[str]
    classes: list[str]


def load(options: ExplainOptions, given: dict[str, Any]) -> Loaded:
    """The checkpoint, its config overridden by the flags given, its model on the device, the CAM settings checked."""
    state = load_checkpoint(options.checkpoint)
    stored = state["config"]
    config = config_from_dict({**stored, **{name: getattr(Config, name) for name in FRESH}, **given})
    config.run_name = given.get("run_name") or f"{stored.get('run_name') or Path(options.checkpoint).parent.name}" \
                                               f"-explain"
    device = resolve_device(config.device)
    classes = list(state["classes"])
    model = timm.create_model(config.model, num_classes=len(classes))
    load_model_state(model, state, options.checkpoint)
    model.to(device).eval()
    try:  # fail on a bad CAM setting now, not after the data is loaded
        layers = check_cam_settings(model, config.cam_method, config.cam_layer)
    except ValueError as exc:
        flag = "--cam_method" if config.cam_method not in CAM_METHODS else "--cam_layer"
        raise ConfigError(f"{flag} {getattr(config, flag[2:])!r}: {exc}") from None
    return Loaded(config, state, model, device, layers, classes)


def out_folder(loaded: Loaded, options: ExplainOptions, default: Path) -> Path:
    folder = Path(loaded.config.out_dir or default)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out_dir {str(folder)!r} cannot be created ({exc.strerror or exc})") from None
    loaded.config.out_dir = str(folder)
    return folder


def tracker_for(loaded: Loaded, options: ExplainOptions) -> Tracker:
    config = loaded.config
    return Tracker({**config.to_dict(), "checkpoint": options.checkpoint, "checkpoint_epoch": loaded.state["epoch"],
                    "images": options.images, "target_class": options.target_class, "compare": options.compare},
                   mode=config.wandb_mode, project=config.wandb_project, entity=config.wandb_entity,
                   name=config.run_name, job_type="explain")


def explain_checkpoint(options: ExplainOptions, given: dict[str, Any]) -> dict[str, Any]:
    """Explain the checkpoint's test-set mistakes (and compare methods); returns :func:`explain_model`'s dict."""
    loaded = load(options, given)
    config = loaded.config
    # the checkpoint's test subset, never downloaded (a typo must not fetch 170 MB)
    _, test = load_data(config.data_dir, download=False)
    if test.classes != loaded.classes:
        raise DataError(f"--data_dir {config.data_dir!r} has classes {test.classes[:20]}, the checkpoint "
                        f"{loaded.classes[:20]}")
    indices = balanced_subset(test.labels, config.test_subset, config.seed)
    out_dir = out_folder(loaded, options, Path(options.checkpoint).resolve().parent)
    tracker = tracker_for(loaded, options)
    result = explain_model(loaded.model, test.subset(indices), out_dir=out_dir, tracker=tracker,
                           samples=config.explain_samples, cam_method=config.cam_method, cam_layer=loaded.layers,
                           device=loaded.device, amp=amp_dtype(config.precision, loaded.device),
                           batch_size=config.eval_batch_size, indices=indices, epoch=loaded.state["epoch"],
                           trust=config.trust, compare=[m.strip() for m in options.compare.split(",") if m.strip()])
    tracker.summary({"test_acc_no_tta": result["acc"], "mistakes": result["mistakes"],
                     "explained": result["explained"], "checkpoint_epoch": loaded.state["epoch"]})
    tracker.finish()
    return result


def explain_files(options: ExplainOptions, given: dict[str, Any]) -> dict[str, Any]:
    """Explain the images of ``--images``; returns :func:`explain.report.explain_images`' dict and what was read."""
    loaded = load(options, given)
    target = None
    if options.target_class:
        if options.target_class not in loaded.classes:
            raise ConfigError(f"--target_class {options.target_class!r} is not a class of the checkpoint"
                              f"{closest(options.target_class, loaded.classes, prefix='')} (one of "
                              f"{', '.join(loaded.classes[:20])})")
        target = loaded.classes.index(options.target_class)
    images = read_images(options.images, skip_bad=options.skip_bad)
    out_dir = out_folder(loaded, options, Path(options.checkpoint).resolve().parent / "images")
    tracker = tracker_for(loaded, options)
    result = explain_images(loaded.model, images, loaded.classes, out_dir=out_dir, tracker=tracker,
                            method=loaded.config.cam_method, layers=loaded.layers, target_class=target,
                            trust=loaded.config.trust)
    tracker.finish()
    return {**result, "notes": images.notes, "skipped": images.skipped, "out_dir": str(out_dir)}


def report(options: ExplainOptions, result: dict[str, Any]) -> None:
    """What was done, on stdout (and ``warning:`` lines on stderr)."""
    def say(line: str) -> None:
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)

    if options.images:
        for line in [*result["notes"], *(f"skipped {file}: {why}" for file, why in result["skipped"]),
                     *result["lines"]]:
            say(line)
        say(f"wrote {result['out_dir']}/images.png and images.json")
    else:
        pictures = ["misclassified", "gradcam", "confusion_matrix"] + (
            ["faithfulness", "sanity"] if "trust_verdict" in result else []) + (
            ["cam_methods"] if "cam_methods" in result else [])
        say(f"explained {result['explained']} of {result['mistakes']} mistakes on {result['images']:,} test images "
            f"(acc {result['acc']:.4f}); wrote {Path(result['misclassified_png']).parent}/{{{','.join(pictures)}}}.png")
        for row in compare_table(result.get("cam_methods", [])):
            say(row)
    if "trust_verdict" in result:
        say(result["trust_verdict"])


def compare_table(rows: list[dict[str, Any]]) -> list[str]:
    """The CAM method comparison as aligned text lines, most faithful first."""
    if not rows:
        return []
    header = ["method", "deletion AUC", "insertion AUC", "sanity rank corr", "s/image"]
    lines = [header] + [[r["method"], f"{r['deletion_auc']:.3f} ({r['deletion_auc_random']:.3f} random)",
                         f"{r['insertion_auc']:.3f} ({r['insertion_auc_random']:.3f} random)",
                         f"{r['sanity_rank_corr']:.2f}", f"{r['seconds_per_image']:.3f}"] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, explain, and turn user errors into one ``error:`` line and exit status 2."""
    with stops_raise():
        try:
            options, given = parse_args(argv)
            result = (explain_files if options.images else explain_checkpoint)(options, given)
        except USER_ERRORS as exc:
            with stops_ignored():
                finish_active_run(1)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Stopped as stop:
            with stops_ignored():
                finish_active_run(stop.wandb_exit_code)
            print(f"stopped: {stop.signal_name} while explaining; the PNGs and the W&B run may be incomplete",
                  file=sys.stderr)
            return exit_status(stop)
        except BaseException:
            with stops_ignored():
                finish_active_run(1)
            raise
    report(options, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
