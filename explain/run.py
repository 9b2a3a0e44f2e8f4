"""Explain a trained checkpoint's mistakes: a W&B run (``job_type="explain"``) and three PNG files.

    python explain/run.py --checkpoint runs/NAME/best.pt
    python explain/run.py --checkpoint best.pt --data_dir ~/cifar10-jpeg --explain_samples 32 --cam_method gradcampp
    python -m explain.run --checkpoint best.pt --cam_layer layer3,layer4 --out_dir pictures --wandb_mode offline

Logs the ``explain/*`` table and plots of :mod:`explain.report` and writes ``misclassified.png``, ``gradcam.png`` and
``confusion_matrix.png`` into ``--out_dir`` (default: the checkpoint's folder). The data, the test subset and the CAM
settings default to the checkpoint's config; flags override them. Bad input exits with status 2 and one ``error:``
line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python explain/run.py`: import the repo's packages, not explain/*.py as top-level
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

from explain.cam import CAM_METHODS
from explain.report import check_cam_settings, explain_model
from train.checkpoint import CheckpointError, load_checkpoint, load_model_state
from train.config import Config, ConfigError, ErrorExitParser, config_from_dict, reject_unknown
from train.data import DataError, balanced_subset, load_data
from train.engine import amp_dtype, resolve_device
from train.tracking import Tracker

USER_ERRORS = (ConfigError, DataError, CheckpointError)

# ---- flags ---------------------------------------------------------------------------------------------------------
# Each flag but --checkpoint is a Config key, so values are coerced and validated exactly as train/run.py does.
# The data, subset, seed and CAM settings come from the checkpoint's config unless given; these start afresh:
FRESH_DEFAULTS = {
    "explain_samples": Config.explain_samples,  # a run trained with --explain_samples 0 still gets explained here
    "device": Config.device,  # the machine that explains need not be the one that trained
    "precision": Config.precision,
    "eval_batch_size": Config.eval_batch_size,
    "wandb_mode": Config.wandb_mode,
    "out_dir": "",  # empty = the checkpoint's folder
}
FLAGS = {
    "data_dir": "image-folder root or CIFAR-10 batches (default: the checkpoint's)",
    "test_subset": "class-balanced subset of the test set, 0 = all (default: the checkpoint's)",
    "explain_samples": f"most confident mistakes in the table (default: {Config.explain_samples})",
    "cam_method": f"one of {', '.join(CAM_METHODS)} (default: the checkpoint's)",
    "cam_layer": "module(s) to compute the CAM on, comma-separated names are fused (default: the checkpoint's)",
    "out_dir": "where the PNGs go (default: the checkpoint's folder)",
    "device": "auto, cpu, cuda or cuda:N (default: auto)",
    "precision": "auto, fp32 or bf16 for the prediction pass (default: auto)",
    "eval_batch_size": f"images per prediction pass (default: {Config.eval_batch_size})",
    "wandb_mode": "auto, online, offline or disabled (default: auto)",
    "wandb_project": "W&B project (default: the checkpoint's)",
    "wandb_entity": "W&B entity (default: the checkpoint's)",
    "run_name": "W&B run name (default: the training run's name + '-explain')",
}


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, dict[str, str]]:
    """The checkpoint path and the flags given, as strings (``--key=value``, ``--key value``, dashes or underscores)."""
    parser = ErrorExitParser(prog="explain/run.py", allow_abbrev=False,
                             description="Explain a checkpoint's mistakes with Grad-CAMs, tracked in W&B.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a best.pt or last.pt of train/run.py")
    for name, text in FLAGS.items():
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                            help=text)
    namespace, unknown = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    reject_unknown(unknown, ["checkpoint", *FLAGS])
    given = vars(namespace)
    return given.pop("checkpoint"), given


def explain_checkpoint(path: str, given: dict[str, str]) -> dict[str, Any]:
    """Load ``path``, rebuild its model and data, and explain its mistakes; returns :func:`explain_model`'s dict."""
    # ---- checkpoint and the effective config ---------------------------------------------------------------------
    state = load_checkpoint(path)
    stored = state["config"]
    config = config_from_dict({**stored, **FRESH_DEFAULTS, **given})
    config.run_name = given.get("run_name") or f"{stored.get('run_name') or Path(path).parent.name}-explain"
    out_dir = Path(config.out_dir or Path(path).resolve().parent)
    config.out_dir = str(out_dir)
    classes = list(state["classes"])

    # ---- device and model ---------------------------------------------------------------------------------------
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {config.device!r}: CUDA is not available on this machine")
    model = timm.create_model(config.model, num_classes=len(classes))
    load_model_state(model, state, path)
    model.to(device).eval()
    # Fail on a bad CAM setting now, not after the data is loaded.
    try:
        check_cam_settings(model, config.cam_method, config.cam_layer)
    except ValueError as exc:
        flag = "--cam_method" if config.cam_method not in CAM_METHODS else "--cam_layer"
        raise ConfigError(f"{flag} {getattr(config, flag[2:])!r}: {exc}") from None

    # ---- data: the checkpoint's test subset, never downloaded (a typo must not fetch 170 MB) ----------------------
    _, test = load_data(config.data_dir, download=False)
    if test.classes != classes:
        raise DataError(f"--data_dir {config.data_dir!r} has classes {test.classes}, the checkpoint {classes}")
    indices = balanced_subset(test.labels, config.test_subset, config.seed)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out_dir {str(out_dir)!r} cannot be created ({exc.strerror or exc})") from None

    # ---- explain, tracked ----------------------------------------------------------------------------------------
    tracker = Tracker({**config.to_dict(), "checkpoint": str(path), "checkpoint_epoch": state["epoch"]},
                      mode=config.wandb_mode, project=config.wandb_project, entity=config.wandb_entity,
                      name=config.run_name, job_type="explain")
    try:
        result = explain_model(model, test.subset(indices), out_dir=out_dir, tracker=tracker,
                               samples=config.explain_samples, cam_method=config.cam_method,
                               cam_layer=config.cam_layer, device=device, amp=amp_dtype(config.precision, device),
                               batch_size=config.eval_batch_size, indices=indices, epoch=state["epoch"])
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.summary({"test_acc_no_tta": result["acc"], "mistakes": result["mistakes"],
                     "explained": result["explained"], "checkpoint_epoch": state["epoch"]})
    tracker.finish()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, explain, and turn user errors into one ``error:`` line and exit status 2."""
    try:
        path, given = parse_args(argv)
        result = explain_checkpoint(path, given)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"explained {result['explained']} of {result['mistakes']} mistakes on {result['images']:,} test images "
          f"(acc {result['acc']:.4f}); wrote {Path(result['misclassified_png']).parent}/"
          "{misclassified,gradcam,confusion_matrix}.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
