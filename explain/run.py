"""Explain a trained checkpoint: its test-set mistakes, or any images of yours; a W&B run (``job_type="explain"``).

    python explain/run.py --checkpoint runs/NAME/best.pt
    python explain/run.py --checkpoint best.pt --data_dir ~/cifar10-jpeg --explain_samples 32 --cam_method gradcampp
    python explain/run.py --checkpoint best.pt --compare gradcam,gradcampp,layercam,scorecam
    python explain/run.py --checkpoint best.pt --images cat.jpg holiday/ --target_class dog

On the test set (or ``--split train``): the ``explain/*`` tables and plots of :mod:`explain.report`,
``misclassified.png``, the CAM grid named after the method (``gradcam.png``, ...), ``confusion_matrix.png``, the trust
figures (``faithfulness.png``, ``sanity.png``) and the label issues; ``--compare`` ranks CAM methods from paired
per-image differences on the trust sample. With ``--images``: one line per image, ``images.png`` and ``images.json``.
Either way a ``summary.json`` says what was explained (checkpoint, split, data, images, precision, seconds, the
accuracy measured) and holds the same ``explain`` section as a training run's. Everything goes into a new
``explain-<time>/`` folder beside the checkpoint (or ``--out_dir``, new or empty): a run's outputs are never
overwritten.
The data, the test subset, the precision and the CAM settings default to the checkpoint's config; flags override
them. Bad input exits with status 2 and one ``error:`` line; SIGTERM and Ctrl-C stop cleanly with a ``stopped:`` line.
"""

from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__":  # the imports below take seconds: a stop meanwhile ends quietly, not with a traceback
    def _stopped_while_starting(signum: int, frame: object) -> None:
        print(f"stopped: {signal.Signals(signum).name} during start-up; nothing was written", file=sys.stderr)
        sys.stderr.flush()  # then exit at once: a library import may swallow SystemExit; nothing is open yet
        os._exit(128 + signum)  # nothing was explained: not a success (130 for Ctrl-C, 143 for SIGTERM)

    for _sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_sig) is not signal.SIG_IGN:  # nohup, `cmd &`: an ignored signal stays ignored
            signal.signal(_sig, _stopped_while_starting)

import argparse
import itertools
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python explain/run.py`: import the repo's packages, not explain/*.py as top-level
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

from explain.cam import CAM_METHODS
from explain.report import (
    IMAGES_PER_PASS,
    SHOWN_IMAGES,
    ExplainSettings,
    check_cam_settings,
    explain_images,
    explain_model,
    explain_summary,
)
from train.checkpoint import CheckpointError, load_checkpoint, load_model_state
from train.config import (
    Config,
    ConfigError,
    build_parser,
    closest,
    coerce,
    config_from_dict,
    one_line,
    parse_flags,
)
from train.data import (
    DataError,
    Images,
    balanced_subset,
    decode_images,
    image_inputs,
    load_split,
    resize_note,
    special_note,
)
from train.engine import EMULATED_BF16, amp_dtype, cpu_bf16_native, resolve_device
from train.files import write_json
from train.model import check_model_name
from train.stops import Stopped, stops_ignored, stops_raise
from train.tracking import Tracker, check_wandb_environment, finish_active_run


class WriteError(OSError):
    """Writing the outputs failed (a full disk, a read-only folder); the message says what was written."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, WriteError)
SPLITS = ("test", "train")  # the splits of a data folder explain/run.py can explain (--split)


@dataclass
class ExplainOptions:
    """What to explain"""

    checkpoint: str
    """A best.pt or last.pt written by train/run.py."""
    images: list[str] = field(default_factory=list)
    """Explain these image files and folders (any size, any mode) instead of the test set's mistakes."""
    target_class: str = ""
    """With --images: the class whose CAM is shown; empty = each image's top prediction."""
    skip_bad: bool | None = None
    """With --images: skip the files of a folder that are not readable images, listing them, instead of stopping;
    False also refuses special files (FIFOs, sockets, devices), which are otherwise skipped with a warning."""
    compare: str = ""
    """Comma-separated CAM methods to compare (e.g. gradcam,layercam,scorecam), each on the same images: the trust
    sample (--trust_images of the explained split, seeded, stratified by class and by right/wrong prediction). They
    are ranked from paired per-image differences: for each pair, intervals of the difference in deletion and in
    insertion AUC on the same images, Holm-corrected. The result is a partial order: a method is above another only
    where its paired difference says so (others tie), and a method failing the randomization check is never above
    one that passes. Not with --images."""
    split: str = "test"
    """The split of --data_dir explained, test or train (--test_subset picks from it); label issues are only found
    reliably on images the model did not train on."""


# ---- flags ---------------------------------------------------------------------------------------------------------
# The training flags that apply here, with their Config docstrings as help. The data, subset, seed, precision (so the
# accuracy measured is the one training measured) and CAM settings come from the checkpoint's config unless given;
# these start afresh (the machine that explains is not the one that trained, and a run trained with
# --explain_samples 0 still gets explained here):
FRESH = ("explain_samples", "device", "eval_batch_size", "wandb_mode", "out_dir", "run_name", "trust_images")
FROM_CHECKPOINT = ("data_dir", "test_subset", "precision", "cam_method", "cam_layer", "trust", "label_issues",
                   "wandb_project", "wandb_entity")
DEFAULTS_SHOWN = {**{name: "the checkpoint's" for name in FROM_CHECKPOINT},
                  "out_dir": "a new explain-<time>/ folder beside the checkpoint",
                  "run_name": "the training run's name + '-explain'"}
# The shared flags in this program's words (their Config docstrings speak of training).
HELPS = {
    "data_dir": "Image-folder root or CIFAR-10 python batches holding the images to explain; only the --split "
                "folder is needed (test/<class>/...), its classes any of the checkpoint's; never downloaded.",
    "test_subset": "Class-balanced, seeded subset of the explained split (0 = all of it).",
    "explain_samples": "Most confident mistakes shown with their CAMs in the table and pictures (0 = none: no "
                       "misclassified.png, CAM grid or mistakes table, as in training; the confusion matrix, trust "
                       "figures and label issues are still made).",
    "precision": "auto (bf16 autocast on CUDA and on a CPU that runs bf16 natively, fp32 elsewhere), fp32 or bf16: "
                 "the autocast of the prediction pass (the CAMs are fp32); the checkpoint's, so the accuracy is the "
                 "one training measured.",
    "eval_batch_size": "Images per prediction forward pass.",
    "out_dir": "Folder the pictures and JSON files go to: new or empty (the outputs of a run are never overwritten).",
    "run_name": "W&B run name of this explain run.",
    "cam_method": "torchcam method of the maps (gradcam, gradcampp, layercam, scorecam, ...); the CAM grid is named "
                  "after it (gradcam.png, layercam.png, ...).",
    "cam_layer": "Module the CAMs are computed on; comma-separated names are fused.",
    "trust": "Measure how far the CAMs can be trusted (deletion/insertion against smooth random maps, the "
             "randomization check at every stage, 95% intervals) and give a verdict: faithful, not faithful or "
             "inconclusive.",
    "trust_images": "Images the trust figures are measured on: a seeded sample of the explained images stratified "
                    "by class and right/wrong prediction; unset = 256 on a GPU, 32 on the CPU.",
    "label_issues": "Find the explained images whose label is likely wrong (cleanlab): label_issues.json, "
                    "label_issues.png and the W&B table.",
}
# Files that mark a folder as holding a run's outputs (training or explain): explain never writes over them.
RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "summary.json", "misclassified.png", "confusion_matrix.png",
             "images.json", "images.png", "faithfulness.png", "label_issues.json", "cam_methods.json")


def parser() -> argparse.ArgumentParser:
    """explain/run.py's flags: its own and the training flags that apply, help from their docstrings."""
    return build_parser("explain/run.py", "Explain a checkpoint's mistakes, or any images, with CAMs, tracked in W&B.",
                        [(ExplainOptions, None), (Config, FROM_CHECKPOINT + FRESH)], DEFAULTS_SHOWN, HELPS,
                        {Config: "Data, CAM, trust and W&B settings (unless given: the checkpoint's data and CAM "
                                 "settings)"})


def parse_args(argv: Sequence[str] | None = None) -> tuple[ExplainOptions, dict[str, Any]]:
    """explain/run.py's own options and the training flags given (``--key=value``, ``--key value``, dashes)."""
    given = parse_flags(parser(), sys.argv[1:] if argv is None else argv)
    own = {f.name: coerce(f.name, given.pop(f.name), ExplainOptions) for f in fields(ExplainOptions)
           if f.name in given}
    options = ExplainOptions(**own)
    methods = compared(options)
    if options.compare.strip() and not methods:  # "," or " , ": the user meant to compare and named nothing
        raise ConfigError(f"--compare {options.compare!r} names no CAM method; give them comma-separated, e.g. "
                          f"--compare gradcam,layercam")
    for method in methods:
        if method not in CAM_METHODS:
            raise ConfigError(f"--compare: unknown CAM method {method!r}{closest(method, CAM_METHODS, prefix='')}; "
                              f"valid methods: {', '.join(CAM_METHODS)}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ConfigError(f"--compare {options.compare!r}: {', '.join(repeated)} given more than once; name each "
                          f"method once")
    if options.images and methods:
        raise ConfigError("--compare applies to the checkpoint's data (the trust sample of --split), not to --images")
    if not options.images and (options.target_class or options.skip_bad is not None):
        raise ConfigError("--target_class and --skip_bad apply to --images")
    if options.split not in SPLITS:
        raise ConfigError(f"--split {options.split!r}: unknown split{closest(options.split, SPLITS, prefix='')}; "
                          f"valid splits: {', '.join(SPLITS)}")
    if options.images and options.split != "test":
        raise ConfigError("--split applies to the checkpoint's data, not to --images")
    return options, given


def compared(options: ExplainOptions) -> list[str]:
    """The methods of ``--compare``, in the order given."""
    return [m.strip() for m in options.compare.split(",") if m.strip()]


@dataclass
class Loaded:
    """A checkpoint's model, ready to explain, and the effective settings."""

    config: Config
    state: dict[str, Any]
    model: torch.nn.Module
    device: torch.device
    layers: list[str]
    classes: list[str]
    amp: torch.dtype | None  # the autocast dtype of the prediction pass (None = fp32)
    precision_from: str  # where config.precision came from: "given" (--precision), "checkpoint" or "default"

    @property
    def precision(self) -> str:
        """What the predictions compute in: ``bf16`` or ``fp32``."""
        return "bf16" if self.amp is not None else "fp32"


def load(options: ExplainOptions, given: dict[str, Any]) -> Loaded:
    """The checkpoint, its config overridden by the flags given, its model on the device, the CAM settings checked."""
    state = load_checkpoint(options.checkpoint)
    stored = state["config"]
    config = config_from_dict({**stored, **{name: getattr(Config, name) for name in FRESH}, **given})
    precision_from = "given" if "precision" in given else "checkpoint" if "precision" in stored else "default"
    config.run_name = given.get("run_name") or f"{stored.get('run_name') or Path(options.checkpoint).parent.name}" \
                                               f"-explain"
    device = resolve_device(config.device)
    classes = list(state["classes"])
    check_model_name(config.model)  # a model this timm lacks: one error line, not timm's traceback
    model = timm.create_model(config.model, num_classes=len(classes))
    load_model_state(model, state, options.checkpoint)
    model.to(device).eval()
    try:  # fail on a bad CAM setting now, not after the data is loaded
        layers = check_cam_settings(model, config.cam_method, config.cam_layer)
    except ValueError as exc:
        flag = "--cam_method" if config.cam_method not in CAM_METHODS else "--cam_layer"
        raise ConfigError(f"{flag} {getattr(config, flag[2:])!r}: {exc}") from None
    return Loaded(config, state, model, device, layers, classes, amp_dtype(config.precision, device), precision_from)


def start_line(loaded: Loaded, options: ExplainOptions, what: str, out_dir: Path) -> str:
    """What is explained, on what, in which precision (and where that came from) and where it goes."""
    config = loaded.config
    autocast = "bf16 autocast" if loaded.amp is not None else "fp32"
    source = {"given": f"--precision {config.precision} given",
              "checkpoint": f"the checkpoint's --precision {config.precision}",
              "default": f"--precision {config.precision}: the checkpoint records none"}[loaded.precision_from]
    if config.precision == "auto":  # resolved per machine: say how here, which may differ from where it trained
        source += (", resolved on this machine: CUDA" if loaded.device.type == "cuda" else
                   ", resolved on this machine: its CPU runs bf16 natively" if cpu_bf16_native() else
                   ", resolved on this machine: its CPU has no native bf16, so fp32 even if the run trained in bf16")
    elif config.precision == "bf16" and loaded.device.type == "cpu" and not cpu_bf16_native():
        source += f"; {EMULATED_BF16}"
    return (f"explaining {options.checkpoint} (epoch {loaded.state['epoch']}, {config.model}) on {loaded.device} in "
            f"{autocast} ({source}); {what}; out_dir {out_dir}")


def out_folder(loaded: Loaded, options: ExplainOptions) -> Path:
    """The folder this explain run writes: ``--out_dir`` (refused when it holds a run's outputs), or a new
    ``explain-<time>`` folder beside the checkpoint; a training run's outputs are never overwritten."""
    if loaded.config.out_dir:
        folder = Path(loaded.config.out_dir)
        if folder.exists() and not folder.is_dir():  # as train/run.py says it
            raise ConfigError(f"--out_dir {str(folder)!r} is a file, not a folder")
        held = [name for name in RUN_FILES if (folder / name).exists()] if folder.is_dir() else []
        if held:
            raise ConfigError(f"--out_dir {str(folder)!r} already holds a run's outputs ({', '.join(held[:3])}); "
                              f"explain writes into a new or empty folder (the default is a new explain-<time>/ "
                              f"beside the checkpoint)")
    else:
        base = Path(options.checkpoint).resolve().parent / f"explain-{time.strftime('%Y%m%d-%H%M%S')}"
        folder, n = base, 1
        while folder.exists():  # two explain runs in one second
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out_dir {str(folder)!r} cannot be created ({exc.strerror or exc})") from None
    loaded.config.out_dir = str(folder)
    return folder


def tracker_for(loaded: Loaded, options: ExplainOptions) -> Tracker:
    config = loaded.config
    return Tracker({**config.to_dict(), "checkpoint": options.checkpoint, "checkpoint_epoch": loaded.state["epoch"],
                    "images": options.images, "target_class": options.target_class, "compare": options.compare,
                    "split": options.split},
                   mode=config.wandb_mode, project=config.wandb_project, entity=config.wandb_entity,
                   name=config.run_name, job_type="explain")


def explain_checkpoint(options: ExplainOptions, given: dict[str, Any]) -> dict[str, Any]:
    """Explain the mistakes (and label issues) of the checkpoint on ``--split`` of its data (and compare methods);
    returns :func:`explain_model`'s dict, ``notes`` (``warning:`` lines), ``out_dir`` and ``samples``; writes
    ``summary.json``."""
    started = time.perf_counter()
    loaded = load(options, given)
    config = loaded.config
    # the checkpoint's test subset of the split, never downloaded (a typo must not fetch 170 MB); a folder of new
    # images needs only that split's class folders, any of the checkpoint's classes
    data = load_split(config.data_dir, options.split, loaded.classes)
    if not len(data):
        raise DataError(f"--split {options.split}: --data_dir {config.data_dir!r} has no {options.split} images")
    present = torch.unique(data.labels).tolist()
    if config.label_issues and len(present) < 2:
        raise DataError(f"--split {options.split}: every image of --data_dir {config.data_dir!r} is filed under "
                        f"{data.classes[present[0]]!r}; label issues need at least two classes (or --label_issues "
                        f"False)")
    trained_on = loaded.state["config"].get("data_dir")
    notes = list(data.notes)
    # the checkpoint's own training images: its probabilities on them are in-sample
    in_sample = options.split == "train" and same_folder(config.data_dir, trained_on)
    if in_sample and config.label_issues:
        notes.append(f"warning: --split train: the checkpoint was trained on the train split of {trained_on!r}; on "
                     f"images a model trained on, its probabilities are in-sample (it has fit their labels, errors "
                     f"included), so label issues are understated; find them on images it never saw (--split "
                     f"test, or another --data_dir), or train on part of the data and explain the held-out part")
    indices = balanced_subset(data.labels, config.test_subset, config.seed)
    out_dir = out_folder(loaded, options)
    print(one_line(start_line(loaded, options, f"{len(indices):,} {options.split} images of {config.data_dir}",
                              out_dir)), flush=True)
    tracker = tracker_for(loaded, options)
    with writing(out_dir):
        settings = ExplainSettings.from_config(config, cam_layer=loaded.layers, compare=compared(options),
                                               in_sample=in_sample)
        result = explain_model(loaded.model, data.subset(indices), settings, out_dir=out_dir, tracker=tracker,
                               device=loaded.device, amp=loaded.amp, indices=indices, epoch=loaded.state["epoch"])
    split = options.split
    accuracy = {f"{split}_acc": result.get("acc_tta", result["acc"]), f"{split}_acc_no_tta": result["acc"]}
    tracker.summary({f"{split}_acc_no_tta": result["acc"], "in_sample": in_sample, "mistakes": result["mistakes"],
                     "explained": result["explained"], "checkpoint_epoch": loaded.state["epoch"]})
    summary = {**what_was_explained(loaded, options, tracker), "split": split, "data_dir": config.data_dir,
               "test_subset": config.test_subset, "images": result["images"], "in_sample": in_sample,
               **accuracy, "tta": config.tta, "explain_samples": config.explain_samples,
               "compare": compared(options), "seconds": round(time.perf_counter() - started, 3),
               "explain": explain_summary(result)}
    with writing(out_dir):
        write_json(out_dir / "summary.json", summary)
    tracker.finish()
    return {**result, "notes": notes, "out_dir": str(out_dir), "samples": config.explain_samples}


def what_was_explained(loaded: Loaded, options: ExplainOptions, tracker: Tracker) -> dict[str, Any]:
    """summary.json's first keys, shared by both modes: the checkpoint, how the predictions were computed, the CAM
    method and the W&B run."""
    return {"checkpoint": str(Path(options.checkpoint).resolve()), "checkpoint_epoch": loaded.state["epoch"],
            "model": loaded.config.model, "classes": len(loaded.classes), "device": str(loaded.device),
            "precision": loaded.precision, "precision_setting": loaded.config.precision,
            "precision_from": loaded.precision_from, "cam_method": loaded.config.cam_method,
            "cam_layer": ",".join(loaded.layers), "wandb_run_id": tracker.id, "wandb_run_dir": tracker.dir}


def same_folder(a: str | None, b: str | None) -> bool:
    """Whether two data folders are one (paths resolved; a folder that cannot be resolved compares as written)."""
    if a is None or b is None:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return a == b


def explain_files(options: ExplainOptions, given: dict[str, Any]) -> dict[str, Any]:
    """Explain the images of ``--images``; returns :func:`explain.report.explain_images`' dict and what was read;
    writes ``summary.json`` (no accuracy: the images have no labels)."""
    started = time.perf_counter()
    loaded = load(options, given)
    target = None
    if options.target_class:
        if options.target_class not in loaded.classes:
            raise ConfigError(f"--target_class {options.target_class!r} is not a class of the checkpoint"
                              f"{closest(options.target_class, loaded.classes, prefix='')} (one of "
                              f"{', '.join(loaded.classes[:20])})")
        target = loaded.classes.index(options.target_class)
    files, direct, special = image_inputs(options.images, skip_special=options.skip_bad is not False)
    skipped: list[tuple[str, str]] = []
    sizes: Counter = Counter()

    def batches() -> Iterator[Images]:  # decoded IMAGES_PER_PASS at a time: any number of images, bounded memory
        for start in range(0, len(files), IMAGES_PER_PASS):
            batch = decode_images(files[start:start + IMAGES_PER_PASS], direct, skip_bad=bool(options.skip_bad))
            skipped.extend(batch.skipped)
            sizes.update(batch.sizes)
            yield batch

    stream = batches()
    first = next((batch for batch in stream if batch.names), None)
    if first is None:
        why = [f"{path} is a {kind}, not a regular file" for path, kind in special]
        why += [f"{name}: {reason}" for name, reason in skipped]
        shown = "; ".join(map(str, why[:3])) + (f"; and {len(why) - 3} more" if len(why) > 3 else "")
        raise DataError("--images: no image to explain" + (f" ({len(why)} file(s) skipped: {shown})" if why else ""))
    for line in special_note(special):
        print(one_line(line), file=sys.stderr, flush=True)
    out_dir = out_folder(loaded, options)
    print(one_line(start_line(loaded, options, f"the images of {' '.join(options.images)}", out_dir)), flush=True)
    tracker = tracker_for(loaded, options)
    with writing(out_dir):
        result = explain_images(loaded.model, itertools.chain([first], stream), loaded.classes, out_dir=out_dir,
                                tracker=tracker, method=loaded.config.cam_method, layers=loaded.layers,
                                target_class=target, trust=loaded.config.trust,
                                trust_images=loaded.config.trust_images, seed=loaded.config.seed,
                                say=lambda line: print(one_line(line), flush=True), amp=loaded.amp)
        write_json(out_dir / "summary.json", {
            **what_was_explained(loaded, options, tracker), "inputs": options.images, "images": result["images"],
            "skipped": len(skipped) + len(special), "target_class": options.target_class or None,
            "seconds": round(time.perf_counter() - started, 3), "explain": explain_summary(result)})
    tracker.finish()
    return {**result, "notes": resize_note(sizes), "skipped": skipped, "out_dir": str(out_dir)}


@contextmanager
def writing(out_dir: Path) -> Iterator[None]:
    """Turn a failed write into a :class:`WriteError` that says what is in ``out_dir`` and that nothing else was
    touched (the checkpoint and the data are only read)."""
    try:
        yield
    except OSError as exc:
        written = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith(".")) \
            if out_dir.is_dir() else []
        where = f" {exc.filename}" if exc.filename else ""
        raise WriteError(f"writing{where} in {out_dir} failed ({exc.strerror or exc}); written before it: "
                         f"{', '.join(written) or 'nothing'}; the rest was not; the checkpoint and the data are "
                         f"untouched") from None


def report(options: ExplainOptions, result: dict[str, Any]) -> None:
    """What was done, on stdout (and ``warning:`` lines on stderr)."""
    def say(line: str) -> None:  # one line each, whatever a file name holds
        print(one_line(line), file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)

    if options.images:  # the per-image lines were printed as the images were explained
        for line in [*result["notes"], *(f"skipped {file}: {why}" for file, why in result["skipped"])]:
            say(line)
        shown = min(result["images"], SHOWN_IMAGES)
        say(f"explained {result['images']:,} images; wrote {result['out_dir']}/images.png ("
            + (f"the first {shown}" if shown < result["images"] else "all") + "), images.json (all) and summary.json")
    else:
        pictures = ([Path(result[key]).stem for key in ("misclassified_png", "cam_png") if key in result]
                    + ["confusion_matrix"] + (["faithfulness", "sanity"] if "trust_verdict" in result else [])
                    + (["cam_methods"] if "cam_methods" in result else []))
        for line in result["notes"]:
            say(line)
        what = (f"explained {result['explained']} of {result['mistakes']} mistakes on {result['images']:,} "
                f"{options.split} images" if result["samples"] else
                f"explained {result['images']:,} {options.split} images, {result['mistakes']} mistakes not shown "
                f"(--explain_samples 0: no mistakes table, misclassified.png or CAM grid)")
        say(f"{what} (accuracy {result['acc']:.4f} single pass"
            + (f", {result['acc_tta']:.4f} with flip TTA" if "acc_tta" in result else "") + "); wrote "
            f"{result['out_dir']}/{{{','.join(pictures)}}}.png and summary.json")
        for row in compare_table(result.get("cam_methods", {})):
            say(row)
        if "label_issues_line" in result:
            say(result["label_issues_line"])
            for note in result["label_issues_notes"]:
                say(f"warning: label issues: {note}")
    if "trust_line" in result:
        say(result["trust_line"])


def compare_table(compared: dict[str, Any]) -> list[str]:
    """The CAM method comparison (``cam_methods.json``'s content) as aligned text lines: each method's figures with
    their 95 % intervals, the methods its paired differences place it above, and every separated pair."""
    rows = compared.get("methods", []) if compared else []
    if not rows:
        return []
    from explain.trust import COVERAGE

    def ci(row: dict[str, Any], key: str, digits: int = 3) -> str:
        low, high = row[f"{key}_ci"]
        return f"{row[key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    header = ["method", "above", "deletion gain", "insertion gain", "randomization", "verdict", "s/image"]
    lines = [header] + [[r["method"], ",".join(r["above"]) or "-", ci(r, "deletion_gain"), ci(r, "insertion_gain"),
                         f"{r['sanity_result']} at {r['sanity_stage']}", r["trust_verdict"],
                         f"{r['seconds_per_image']:.3f}"] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    separated = [p for p in compared["pairs"] if p["favours"]]
    pairs = "; ".join(f"{p['favours']} over {p['b'] if p['favours'] == p['a'] else p['a']} at {p['metric']} by "
                      f"{abs(p['difference']):.3f}" for p in separated) or "none"
    return table + [f"(gains over smooth random maps with 95% intervals, {COVERAGE}, on {rows[0]['trust_images']} "
                    f"images; a method is above another only where a paired per-image difference separates them, "
                    f"Holm-corrected over {len(compared['pairs'])} tests: {pairs})"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, explain, and turn user errors into one ``error:`` line and exit status 2."""
    with stops_raise():
        try:
            options, given = parse_args(argv)
            check_wandb_environment()  # before any work, as train/run.py does
            result = (explain_files if options.images else explain_checkpoint)(options, given)
        except USER_ERRORS as exc:
            with stops_ignored():
                finish_active_run(1)
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            return 2
        except Stopped as stop:
            with stops_ignored():
                finish_active_run(stop.wandb_exit_code)
            print(f"stopped: {stop.signal_name} while explaining; the pictures, JSON files and the W&B run may be "
                  f"incomplete and summary.json was not written; the checkpoint and the data are untouched",
                  file=sys.stderr)
            # unlike a training run (SIGTERM: a clean, resumable stop, status 0), an explain run has no resume: its
            # outputs are incomplete, and a script must not read success (130 for Ctrl-C, 143 for SIGTERM)
            return 128 + signal.Signals[stop.signal_name].value
        except BaseException:
            with stops_ignored():
                finish_active_run(1)
            raise
    report(options, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
