"""Explain a trained checkpoint's mistakes: a W&B run (``job_type="explain"``) and PNG files.

    python explain/run.py --checkpoint runs/NAME/best.pt
    python explain/run.py --checkpoint best.pt --data_dir ~/cifar10-jpeg --explain_samples 32 --cam_method gradcampp
    python -m explain.run --checkpoint best.pt --cam_layer layer3,layer4 --out_dir pictures --wandb_mode offline

Logs the ``explain/*`` table and plots of :mod:`explain.report` and writes ``misclassified.png``, ``gradcam.png`` and
``confusion_matrix.png`` into ``--out_dir`` (default: the checkpoint's folder). The data, the test subset and the CAM
settings default to the checkpoint's config; flags override them. Bad input exits with status 2 and one ``error:``
line; SIGTERM and Ctrl-C stop cleanly with a ``stopped:`` line.
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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python explain/run.py`: import the repo's packages, not explain/*.py as top-level
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm

from explain.cam import CAM_METHODS
from explain.report import check_cam_settings, explain_model
from train.checkpoint import CheckpointError, load_checkpoint, load_model_state
from train.config import Config, ConfigError, build_parser, coerce, config_from_dict, parse_flags
from train.data import DataError, balanced_subset, load_data
from train.engine import amp_dtype, resolve_device
from train.stops import Stopped, exit_status, stops_ignored, stops_raise
from train.tracking import Tracker, finish_active_run

USER_ERRORS = (ConfigError, DataError, CheckpointError)


@dataclass
class ExplainOptions:
    """What to explain"""

    checkpoint: str
    """A best.pt or last.pt written by train/run.py."""


# ---- flags ---------------------------------------------------------------------------------------------------------
# The training flags that apply here, with their Config docstrings as help. The data, subset, seed and CAM settings
# come from the checkpoint's config unless given; these start afresh (the machine that explains is not the one that
# trained, and a run trained with --explain_samples 0 still gets explained here):
FRESH = ("explain_samples", "device", "precision", "eval_batch_size", "wandb_mode", "out_dir", "run_name")
FROM_CHECKPOINT = ("data_dir", "test_subset", "cam_method", "cam_layer", "trust", "wandb_project", "wandb_entity")
DEFAULTS_SHOWN = {**{name: "the checkpoint's" for name in FROM_CHECKPOINT},
                  "out_dir": "the checkpoint's folder", "run_name": "the training run's name + '-explain'"}


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The checkpoint path and the other flags given (``--key=value``, ``--key value``, dashes or underscores)."""
    parser = build_parser("explain/run.py", "Explain a checkpoint's mistakes with CAMs, tracked in W&B.",
                          [(ExplainOptions, None), (Config, FROM_CHECKPOINT + FRESH)], DEFAULTS_SHOWN)
    given = parse_flags(parser, sys.argv[1:] if argv is None else argv)
    return coerce("checkpoint", given.pop("checkpoint"), ExplainOptions), given


def explain_checkpoint(path: str, given: dict[str, Any]) -> dict[str, Any]:
    """Load ``path``, rebuild its model and data, and explain its mistakes; returns :func:`explain_model`'s dict."""
    # ---- checkpoint and the effective config ---------------------------------------------------------------------
    state = load_checkpoint(path)
    stored = state["config"]
    config = config_from_dict({**stored, **{name: getattr(Config, name) for name in FRESH}, **given})
    config.run_name = given.get("run_name") or f"{stored.get('run_name') or Path(path).parent.name}-explain"
    out_dir = Path(config.out_dir or Path(path).resolve().parent)
    config.out_dir = str(out_dir)
    classes = list(state["classes"])

    # ---- device and model ---------------------------------------------------------------------------------------
    device = resolve_device(config.device)
    model = timm.create_model(config.model, num_classes=len(classes))
    load_model_state(model, state, path)
    model.to(device).eval()
    try:  # fail on a bad CAM setting now, not after the data is loaded
        check_cam_settings(model, config.cam_method, config.cam_layer)
    except ValueError as exc:
        flag = "--cam_method" if config.cam_method not in CAM_METHODS else "--cam_layer"
        raise ConfigError(f"{flag} {getattr(config, flag[2:])!r}: {exc}") from None

    # ---- data: the checkpoint's test subset, never downloaded (a typo must not fetch 170 MB) ----------------------
    _, test = load_data(config.data_dir, download=False)
    if test.classes != classes:
        raise DataError(f"--data_dir {config.data_dir!r} has classes {test.classes[:20]}, the checkpoint "
                        f"{classes[:20]}")
    indices = balanced_subset(test.labels, config.test_subset, config.seed)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out_dir {str(out_dir)!r} cannot be created ({exc.strerror or exc})") from None

    # ---- explain, tracked ----------------------------------------------------------------------------------------
    tracker = Tracker({**config.to_dict(), "checkpoint": str(path), "checkpoint_epoch": state["epoch"]},
                      mode=config.wandb_mode, project=config.wandb_project, entity=config.wandb_entity,
                      name=config.run_name, job_type="explain")
    result = explain_model(model, test.subset(indices), out_dir=out_dir, tracker=tracker,
                           samples=config.explain_samples, cam_method=config.cam_method, cam_layer=config.cam_layer,
                           device=device, amp=amp_dtype(config.precision, device),
                           batch_size=config.eval_batch_size, indices=indices, epoch=state["epoch"])
    tracker.summary({"test_acc_no_tta": result["acc"], "mistakes": result["mistakes"],
                     "explained": result["explained"], "checkpoint_epoch": state["epoch"]})
    tracker.finish()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, explain, and turn user errors into one ``error:`` line and exit status 2."""
    with stops_raise():
        try:
            path, given = parse_args(argv)
            result = explain_checkpoint(path, given)
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
    print(f"explained {result['explained']} of {result['mistakes']} mistakes on {result['images']:,} test images "
          f"(acc {result['acc']:.4f}); wrote {Path(result['misclassified_png']).parent}/"
          "{misclassified,gradcam,confusion_matrix}.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
