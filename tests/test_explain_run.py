"""explain/run.py on the checkpoint of a real training run, read back from disk and from the offline W&B run; bad
input is one ``error:`` line and exit status 2."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import train  # noqa: F401  (registers resnet18_cifar)
from explain import run as explain_run
from explain.report import COLUMNS
from explain.report_labels import LABEL_KEYS
from explain.trust import TRUST_KEYS
from tests.conftest import CLASSES, call_cli, history, logged_summary, run_cli, wandb_records, wandb_summary
from tests.test_report import explain_row, image_cell, logged_table
from train.checkpoint import save_checkpoint
from train.config import Config
from train.data import load_data
from train.engine import amp_dtype, resolve_device

PICTURES = ("misclassified.png", "gradcam.png", "confusion_matrix.png")


# ---------------------------------------------------------------------------------------------------------------------
# A real run, then explain/run.py on its best.pt


@pytest.fixture(scope="module")
def explained(trained, tmp_path_factory):
    """``python explain/run.py --checkpoint best.pt`` with every other setting left to its default, on a copy of
    the shared run's folder (the pictures go into a new explain-<time>/ folder beside the checkpoint)."""
    root = tmp_path_factory.mktemp("explain")
    folder = root / "copy"
    shutil.copytree(trained["out"], folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    result = call_cli("--checkpoint", str(folder / "best.pt"), script="explain/run.py", env={"WANDB_DIR": str(root)})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    made = [p for p in folder.iterdir() if p.name not in before]
    return {"result": result, "run_dir": runs[0], "records": wandb_records(runs[0]), "out": made[0] if made else None,
            "checkpoint": folder / "best.pt", "folder": folder, "before": before, "made": made}


@pytest.mark.slow
def test_explain_writes_a_new_folder_beside_the_checkpoint_and_overwrites_nothing(explained):
    result, out = explained["result"], explained["out"]
    assert len(explained["made"]) == 1 and re.fullmatch(r"explain-\d{8}-\d{6}", out.name)
    # the training run's own pictures and files are untouched
    assert {p.name: p.stat().st_mtime_ns for p in explained["folder"].iterdir() if p != out} == explained["before"]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"explaining {explained['checkpoint']} (epoch ") and lines[0].endswith(f"out_dir {out}")
    done = explained_line(result.stdout)
    assert "200 test images" in done and f"wrote {out}/{{" in done and done.endswith("and summary.json")
    assert "Traceback" not in result.stderr
    for name in PICTURES:
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300


def explained_line(stdout: str) -> str:
    """The line that says what was explained (after the start line)."""
    return next(line for line in stdout.splitlines() if line.startswith("explained "))


def printed_accuracy(stdout: str) -> float:
    return float(re.search(r"\(accuracy (\d\.\d{4}) single pass", explained_line(stdout)).group(1))


def numbers(value) -> list[float]:
    """Every number in a JSON value, nested lists and dicts included."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.mark.slow
def test_explain_writes_a_summary_with_the_explain_section_of_a_training_run(explained, trained, cifar_subset):
    """summary.json in the explain folder: the same ``explain`` keys as the training run's summary.json (every trust
    figure, interval and verdict, the label-issue counts), and what was explained: checkpoint, split, data, images,
    the accuracy (the one printed and the one W&B holds), the precision, seconds."""
    summary = json.loads((explained["out"] / "summary.json").read_text())
    section, training = summary["explain"], trained["summary"]["explain"]
    assert set(section) == set(training)
    assert set(TRUST_KEYS) | set(LABEL_KEYS) <= set(section)  # not equal by both being empty
    assert all(math.isfinite(x) for x in numbers(section)), section
    assert section["images"] == summary["images"] == 200 and section["explained"] == min(64, section["mistakes"])
    best = torch.load(explained["checkpoint"], weights_only=True)
    assert summary["checkpoint"] == str(explained["checkpoint"].resolve())
    assert summary["checkpoint_epoch"] == best["epoch"] and summary["model"] == "resnet18_cifar"
    assert summary["split"] == "test" and summary["data_dir"] == str(cifar_subset) and summary["test_subset"] == 200
    assert summary["in_sample"] is False and summary["compare"] == [] and summary["explain_samples"] == 64
    # the accuracy: what the terminal line printed, what W&B holds, the section's
    acc = summary["test_acc_no_tta"]
    assert acc == section["acc"] and round(acc, 4) == printed_accuracy(explained["result"].stdout)
    assert wandb_summary(explained["run_dir"])["summary"]["test_acc_no_tta"] == pytest.approx(acc)
    assert summary["test_acc"] == section.get("acc_tta", acc) and summary["tta"] == best["config"]["tta"]
    # the precision: the checkpoint's
    assert summary["precision_setting"] == best["config"]["precision"] and summary["precision_from"] == "checkpoint"
    device = torch.device(summary["device"])
    assert summary["precision"] == ("bf16" if amp_dtype(best["config"]["precision"], device) else "fp32")
    assert 0 < summary["seconds"] < 3600
    assert summary["wandb_run_dir"] == str(explained["run_dir"])
    assert summary["wandb_run_id"] and summary["wandb_run_id"] in explained["run_dir"].name


@pytest.mark.slow
def test_explain_measures_the_accuracy_training_measured_in_the_checkpoints_precision(trained, tmp_path):
    """On best.pt, in the checkpoint's precision unless --precision is given: the accuracy printed is the training
    run's val acc_no_tta of that epoch, and the start line says which precision and why."""
    checkpoint = trained["out"] / "best.pt"
    stored, measured = (torch.load(checkpoint, weights_only=True)[key] for key in ("config", "metrics"))
    stored, measured = stored["precision"], measured["val/acc_no_tta"]
    fast = ["--trust=False", "--label_issues=False", "--explain_samples=0", "--wandb_mode=disabled"]
    result = call_cli("--checkpoint", str(checkpoint), "--out_dir", str(tmp_path / "a"), *fast,
                      script="explain/run.py")
    assert result.returncode == 0, result.stderr[-3000:]
    autocast = "bf16 autocast" if amp_dtype(stored, resolve_device("auto")) else "fp32"
    assert f"in {autocast} (the checkpoint's --precision {stored}" in result.stdout.splitlines()[0]
    if stored == "auto":  # resolved per machine, and the line says how (issue 37 item 9)
        assert ", resolved on this machine: its CPU " in result.stdout.splitlines()[0]
    assert printed_accuracy(result.stdout) == round(measured, 4)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["test_acc_no_tta"] == measured
    # --precision wins over the checkpoint's
    other = "fp32" if autocast != "fp32" else "bf16"
    given = call_cli("--checkpoint", str(checkpoint), "--out_dir", str(tmp_path / "b"), f"--precision={other}", *fast,
                     script="explain/run.py")
    assert given.returncode == 0, given.stderr[-3000:]
    assert f"in {'fp32' if other == 'fp32' else 'bf16 autocast'} (--precision {other} given)" in \
        given.stdout.splitlines()[0]
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["precision"] == other and summary["precision_from"] == "given"


@pytest.mark.slow
def test_explain_refuses_an_out_dir_that_holds_a_run(trained, tmp_path):
    result = call_cli("--checkpoint", str(trained["out"] / "best.pt"), f"--out_dir={trained['out']}",
                      "--wandb_mode=disabled", script="explain/run.py")
    assert result.returncode == 2 and result.stderr.startswith("error: --out_dir ")
    assert "already holds a run's outputs" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_explain_help_is_its_own():
    text = explain_run.parser().format_help()
    for wording in ("each is a flag of train/run.py", "no explain step after training", "CIFAR-10 is downloaded",
                    "checkpoints, metrics.jsonl", "out_dir's default name"):
        assert wording not in " ".join(text.split()), wording
    assert "never downloaded" in text and "explain-<time>" in text and "--trust_images" in text
    # --compare says how it ranks: paired per-image differences on the trust sample, a partial order
    words = " ".join(text.split())
    assert "most faithful first" not in words and "on the explained mistakes" not in words
    for wording in ("paired per-image differences", "Holm-corrected", "stratified by class and by right/wrong "
                    "prediction", "partial order", "failing the randomization check is never above one that passes"):
        assert wording in words, wording


@pytest.mark.slow
def test_explain_is_a_wandb_run_of_job_type_explain(explained):
    records = explained["records"]
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["job_type"] == "explain"
    state = wandb_summary(explained["run_dir"])
    assert state["state"] == "finished"
    config = state["config"]
    assert config["checkpoint"] == str(explained["checkpoint"]) and config["run_name"] == "real-run-explain"
    assert config["cam_method"] == "gradcam" and config["cam_layer"] == "layer4"
    assert config["test_subset"] == 200 and config["explain_samples"] == 64  # not the checkpoint's 8
    # the single-pass accuracy explain measured is the one training logged for the same weights and images
    best = torch.load(explained["checkpoint"], weights_only=True)
    assert state["summary"]["test_acc_no_tta"] == pytest.approx(best["metrics"]["val/acc_no_tta"])
    assert state["summary"]["checkpoint_epoch"] == best["epoch"] == explain_row(records)["epoch"]


@pytest.mark.slow
def test_explain_table_shows_the_test_images(explained, cifar_subset):
    records = explained["records"]
    summary = wandb_summary(explained["run_dir"])["summary"]
    table, files = logged_table(records, "explain/misclassified")
    assert table["columns"] == list(COLUMNS)
    assert len(table["data"]) == min(64, summary["mistakes"]) == summary["explained"]
    _, test = load_data(cifar_subset)  # `index` is the position in the full test set, not in the 200-image subset
    classes = test.classes
    for row in table["data"]:
        cell = dict(zip(COLUMNS, row, strict=True))
        np.testing.assert_array_equal(image_cell(cell["image"], files),
                                      test.images[cell["index"]].permute(1, 2, 0).numpy())
        assert cell["true"] == classes[test.labels[cell["index"]]] != cell["pred"] in classes
        assert image_cell(cell["gradcam_pred"], files).shape == image_cell(cell["gradcam_true"], files).shape
    confidences = [row[COLUMNS.index("confidence")] for row in table["data"]]
    assert confidences == sorted(confidences, reverse=True)
    row, tables = explain_row(records), logged_summary(records)
    assert row["explain/confusion_matrix_table._type"] == "table-file"  # a custom chart's table: in history
    for key in ("explain/per_class_acc", "explain/most_confused"):  # plain tables: in the summary only
        assert tables[f"{key}._type"] == "table-file" and f"{key}._type" not in row
    assert row["explain/confusion_matrix_image._type"] == "image-file"
    matrix, _ = logged_table(records, "explain/confusion_matrix_table")
    assert sum(n for _, _, n in matrix["data"]) == 200


@pytest.mark.slow
def test_module_form_with_dash_flags_fused_layers_and_no_wandb(trained, tmp_path):
    out = tmp_path / "pictures"
    result = run_cli("explain.run", "--checkpoint", str(trained["out"] / "best.pt"), "--explain-samples=4",
                     "--cam_method", "gradcampp", "--cam-layer=layer3,layer4", "--out-dir", str(out),
                     "--wandb_mode=disabled", "--trust=False", script="-m", env={"WANDB_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert explained_line(result.stdout).startswith("explained 4 of ")
    # --trust=False: no faithfulness/sanity PNGs; the CAM grid is named after its method
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["misclassified.png", "gradcampp.png", "confusion_matrix.png", "label_issues.json", "label_issues.png",
         "predictions.npz", "summary.json"])
    assert "trust:" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("wandb/*run-*"))


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one `error:` line, exit status 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A well-formed checkpoint of an untrained model (enough to reach the CAM and data checks)."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model = timm.create_model("resnet18_cifar", num_classes=10)
    config = Config(data_dir=str(path.parent / "no-data")).to_dict()
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "epoch": 1, "metrics": {},
                           "classes": [str(i) for i in range(10)]})
    return path


def bad_files(folder, checkpoint) -> dict[str, str]:
    blob = checkpoint.read_bytes()
    files = {
        "truncated.pt": blob[: len(blob) // 2],
        "random.pt": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.pt": b"hello, I am not a checkpoint\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    torch.save({"weights": torch.zeros(3)}, folder / "foreign.pt")
    state = torch.load(checkpoint, weights_only=True)
    save_checkpoint(folder / "unknown_model.pt", {**state, "config": {**state["config"], "model": "resnet18_cifra"}})
    return {name: str(folder / name) for name in [*files, "foreign.pt", "unknown_model.pt"]}


# name: (arguments, with @name for the paths made by bad_files; what the error line must say)
BAD_INPUT = {
    "missing": (["--checkpoint", "@missing"], "does not exist"),
    "truncated": (["--checkpoint", "@truncated.pt"], "truncated or corrupt"),
    "random-bytes": (["--checkpoint", "@random.pt"], "checkpoint '.*random.pt'"),
    "text-file": (["--checkpoint", "@text.pt"], "truncated or corrupt"),
    "foreign": (["--checkpoint", "@foreign.pt"], "not a cifar-insight checkpoint"),
    "cam-method": (["--checkpoint", "@ckpt", "--cam_method=gradcamm"], "--cam_method 'gradcamm': unknown CAM method"),
    "cam-layer": (["--checkpoint", "@ckpt", "--cam-layer", "layer9"], r"--cam_layer 'layer9': unknown layer"),
    "negative-samples": (["--checkpoint", "@ckpt", "--explain_samples=-1"],
                         r"--explain_samples must be in \[0, 10000\], got -1"),
    "unknown-flag": (["--checkpoint", "@ckpt", "--explain_sample=3"], r"unknown flag --explain_sample \(did you mean"),
    "bad-data-dir": (["--checkpoint", "@ckpt"], "--data_dir '.*no-data' has no test/ folder nor cifar-10-batches-py/"),
    "no-checkpoint": (["--explain_samples=3"], "required: --checkpoint"),
    "model-timm-lacks": (["--checkpoint", "@unknown_model.pt"], r"--model 'resnet18_cifra' is not a timm model \(did "
                                                                r"you mean resnet18_cifar\?\)"),
    "wandb-project": (["--checkpoint", "@ckpt", "--wandb_project=a/b"], "--wandb_project 'a/b' is not a name W&B "
                                                                        "accepts"),
    "compare-repeated": (["--checkpoint", "@ckpt", "--compare=gradcam,layercam, gradcam"],
                         "--compare 'gradcam,layercam, gradcam': gradcam given more than once"),
    "compare-no-method": (["--checkpoint", "@ckpt", "--compare= , "],
                          "--compare ' , ' names no CAM method; give them comma-separated, e.g. --compare "
                          "gradcam,layercam"),
    "compare-images": (["--checkpoint", "@ckpt", "--images", "@ckpt", "--compare=layercam"],
                       "--compare applies to the checkpoint's data .*, not to --images"),
}


@pytest.mark.parametrize(("args", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_error_line(args, message, checkpoint, tmp_path, capsys):
    paths = {"missing": str(tmp_path / "missing.pt"), "ckpt": str(checkpoint), **bad_files(tmp_path, checkpoint)}
    argv = [paths[arg[1:]] if arg.startswith("@") else arg for arg in args]
    assert explain_run.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("args", [["--compare", "gradcam,gradcam"], ["--images", "x.png", "--compare", "layercam"]],
                         ids=["repeated", "with-images"])
def test_compare_is_refused_before_any_work(args, checkpoint, tmp_path, capsys):
    """A repeated --compare method (a ValueError traceback after a partial folder, before) and --compare with
    --images (silently ignored, before): one error line, exit status 2, nothing written, no W&B run."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(checkpoint, folder / "best.pt")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DIR", str(tmp_path / "w"))
        patch.chdir(tmp_path)
        assert explain_run.main(["--checkpoint", str(folder / "best.pt"), *args, "--wandb_mode=offline"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: ")
    assert "--compare" in captured.err
    assert [p.name for p in folder.iterdir()] == ["best.pt"] and not (tmp_path / "w").exists()


def test_bad_input_from_the_command_line_has_no_traceback(checkpoint, tmp_path):
    result = run_cli("--checkpoint", bad_files(tmp_path, checkpoint)["text.pt"], script="explain/run.py", timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_explain_finds_label_issues_on_the_test_split(explained, cifar_subset):
    import json

    written = json.loads((explained["out"] / "label_issues.json").read_text())
    assert written["checked"] == 200 and written["method"].startswith("cleanlab ")
    _, test = load_data(cifar_subset)
    assert all(entry["file"] == test.files[entry["index"]] for entry in written["issues"])
    summary = wandb_summary(explained["run_dir"])["summary"]
    assert summary["explain/label_issues"] == len(written["issues"]) and summary["explain/label_issues_checked"] == 200
    assert f"label issues: {len(written['issues'])} of 200 checked images" in explained["result"].stdout
    table, _ = logged_table(explained["records"], "explain/label_issues")
    assert len(table["data"]) == min(32, len(written["issues"]))  # the likeliest 32 (TABLE_ISSUES), all in the JSON


# ---------------------------------------------------------------------------------------------------------------------
# Any number of images, special files, writes that fail


def _noise_images(folder, count: int, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def test_many_images_are_explained_in_batches_and_the_picture_stays_bounded(checkpoint, tmp_path):
    """600 images (3 batches): images.json holds all, images.png the first 48 and says so, the W&B table grows batch
    by batch to all 600 rows; the figure no longer grows with the input (it was 73,644 px tall for 300 images)."""
    folder = tmp_path / "many"
    _noise_images(folder, 600)
    out = tmp_path / "out"
    captured = call_cli("--checkpoint", str(checkpoint), "--images", str(folder), "--out_dir", str(out),
                        "--trust=False", "--wandb_mode=offline", script="explain/run.py",
                        env={"WANDB_DIR": str(tmp_path)})  # this run's folder alone
    assert captured.returncode == 0, captured.stderr[-2000:]
    printed = [line for line in captured.stdout.splitlines() if line.startswith(str(folder))]
    assert len(printed) == 600 and printed[0].startswith(f"{folder / '0000.png'}: ")
    assert captured.stdout.startswith(f"explaining {checkpoint} (epoch 1, resnet18_cifar) on ")
    assert f"explained 600 images; wrote {out}/images.png (the first 48), images.json (all) and summary.json" in \
        captured.stdout
    summary = json.loads((out / "summary.json").read_text())  # what applies: no accuracy, the images have no labels
    assert summary["checkpoint"] == str(checkpoint.resolve()) and summary["inputs"] == [str(folder)]
    assert summary["images"] == 600 and summary["skipped"] == 0 and summary["target_class"] is None
    assert summary["explain"] == {"images": 600}  # --trust=False: nothing else measured
    assert summary["precision_from"] == "checkpoint" and summary["precision"] in ("bf16", "fp32")
    assert summary["seconds"] > 0 and not [key for key in summary if "acc" in key or key in ("split", "in_sample")]
    assert "resized 600 images from 40×40 to 32×32 (bilinear)" in captured.stdout
    rows = json.loads((out / "images.json").read_text())
    assert [Path(r["file"]).name for r in rows] == [f"{i:04d}.png" for i in range(600)]
    with Image.open(out / "images.png") as picture:
        assert picture.size[1] < 6000 and picture.size[0] < 1600  # 24 rows of two images
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")  # call_cli sets W&B up afresh for a new WANDB_DIR
    logged = [r for r in history(wandb_records(run_dir)) if "explain/images._type" in r]
    assert [r["explain/images._type"] for r in logged] == ["incremental-table-file"] * 3  # one increment a batch
    assert [r["explain/images.nrows"] for r in logged] == [256, 512, 600]


def test_special_files_are_skipped_with_a_warning_or_refused(checkpoint, tmp_path):
    """A FIFO among the images is never opened (reading it would hang): skipped with a warning, refused with
    --skip_bad False. In a subprocess with a timeout, so a regression fails instead of hanging the suite."""
    folder = tmp_path / "with-fifo"
    _noise_images(folder, 2)
    os.mkfifo(folder / "pipe.png")
    common = ["--checkpoint", str(checkpoint), "--images", str(folder), "--trust=False", "--wandb_mode=disabled"]
    skipped = run_cli(*common, "--out_dir", str(tmp_path / "a"), script="explain/run.py", timeout=300)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "warning: skipped 1 file(s) that are not regular files" in skipped.stderr and "pipe.png (FIFO)" in \
        skipped.stderr
    assert len(json.loads((tmp_path / "a" / "images.json").read_text())) == 2
    refused = run_cli(*common, "--skip_bad", "False", "--out_dir", str(tmp_path / "b"), script="explain/run.py",
                      timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip() == \
        f"error: --images: {folder / 'pipe.png'} is a FIFO, not a regular file"
    only = run_cli(*common[:3], str(folder / "pipe.png"), *common[4:], "--out_dir", str(tmp_path / "d"),
                   script="explain/run.py", timeout=300)  # the FIFO alone: the error says which file and why
    assert only.returncode == 2 and only.stderr.strip() == (
        f"error: --images: no image to explain (1 file(s) skipped: {folder / 'pipe.png'} is a FIFO, not a regular "
        "file)")
    bare = run_cli(*common[:4], str(folder / "0000.png"), "--skip_bad", *common[4:], "--out_dir",
                   str(tmp_path / "c"), script="explain/run.py", timeout=300)  # a bare boolean flag means True
    assert bare.returncode == 0, bare.stderr[-2000:]


@pytest.fixture(scope="module")
def small_checkpoint(small_folder, tmp_path_factory):
    """An untrained model's checkpoint whose config names the small real folder (12 train, 4 test images a class):
    explained in seconds, with plenty of mistakes."""
    checkpoint = tmp_path_factory.mktemp("small-ckpt") / "cifar.pt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, {"model": timm.create_model("resnet18_cifar", num_classes=10).state_dict(),
                                 "config": Config(data_dir=str(small_folder)).to_dict(), "epoch": 1, "metrics": {},
                                 "classes": CLASSES})
    return checkpoint


def test_explain_samples_0_leaves_out_the_mistakes_and_says_so(small_checkpoint, tmp_path):
    """--explain_samples 0 means what it means in training: no mistakes table, misclassified.png or CAM grid (the
    CAM grid used to say "no misclassified images to explain" with 36 mistakes); the rest is made, and the line says
    the mistakes were left out."""
    out = tmp_path / "out"
    result = call_cli("--checkpoint", str(small_checkpoint), "--out_dir", str(out), "--explain_samples=0",
                      "--trust=False", "--wandb_mode=offline", script="explain/run.py",
                      env={"WANDB_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "label_issues.json", "label_issues.png",
                                                    "predictions.npz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    mistakes = summary["explain"]["mistakes"]
    assert summary["explain"]["explained"] == 0 < mistakes and summary["explain_samples"] == 0
    line = explained_line(result.stdout)
    assert line.startswith(f"explained 40 test images, {mistakes} mistakes not shown (--explain_samples 0: no "
                           f"mistakes table, misclassified.png or CAM grid)")
    assert line.endswith(f"wrote {out}/{{confusion_matrix}}.png and summary.json")
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    row = explain_row(wandb_records(run_dir))
    assert "explain/misclassified._type" not in row and row["explain/confusion_matrix_table._type"] == "table-file"
    assert "explain/label_issues._type" in row


def test_split_train_names_the_accuracy_after_the_split_and_says_in_sample(small_checkpoint, small_folder, tmp_path):
    """--split train on the checkpoint's own training folder: the accuracy is train_acc_no_tta (not test_acc_no_tta,
    which it used to be called) and in_sample is true, in W&B's summary and summary.json; on the test split
    test_acc_no_tta and in_sample false."""
    common = ["--checkpoint", str(small_checkpoint), "--explain_samples=2", "--trust=False", "--wandb_mode=offline"]
    found = {}
    for split in ("train", "test"):
        wandb_dir, out = tmp_path / f"w-{split}", tmp_path / split
        result = call_cli(*common, f"--split={split}", "--out_dir", str(out), script="explain/run.py",
                          env={"WANDB_DIR": str(wandb_dir)})
        assert result.returncode == 0, result.stderr[-3000:]
        (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
        found[split] = (json.loads((out / "summary.json").read_text()), wandb_summary(run_dir)["summary"], result)
    summary, logged, result = found["train"]
    assert summary["split"] == "train" and summary["images"] == 120 and summary["data_dir"] == str(small_folder)
    assert summary["in_sample"] is True and logged["in_sample"] is True
    assert "test_acc_no_tta" not in summary and "test_acc_no_tta" not in logged
    assert logged["train_acc_no_tta"] == summary["train_acc_no_tta"] == summary["explain"]["acc"]
    assert round(summary["train_acc_no_tta"], 4) == printed_accuracy(result.stdout)
    assert "warning: --split train: the checkpoint was trained on the train split" in result.stderr
    assert summary["explain"]["label_issues_in_sample"] is True  # handed to the label issues
    summary, logged, _ = found["test"]
    assert summary["split"] == "test" and summary["images"] == 40 and summary["in_sample"] is False
    assert logged["in_sample"] is False and "train_acc_no_tta" not in logged
    assert logged["test_acc_no_tta"] == summary["test_acc_no_tta"] == summary["explain"]["acc"]
    assert summary["explain"]["label_issues_in_sample"] is False


def test_a_write_that_fails_says_what_was_written(small_checkpoint, small_folder, tmp_path):
    """A full disk or an unwritable file mid-way: one error line naming what was and was not written; the
    checkpoint untouched. (A folder squatting on the CAM grid's name makes its write fail, as a full disk would.)"""
    out = tmp_path / "out"
    (out / "gradcam.png").mkdir(parents=True)
    checkpoint = tmp_path / "cifar.pt"
    shutil.copy(small_checkpoint, checkpoint)
    before = checkpoint.read_bytes()
    result = call_cli("--checkpoint", str(checkpoint), "--data_dir", str(small_folder), "--out_dir", str(out),
                      "--wandb_mode=disabled", "--trust=False", script="explain/run.py")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip()
    assert line.startswith(f"error: writing {out / 'gradcam.png'} in {out} failed (Is a directory); written before "
                           f"it: ") and "misclassified.png" in line and line.endswith(
        "the rest was not; the checkpoint and the data are untouched")
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("script", ["explain/run.py", "sweeps/local.py"])
def test_a_wandb_variable_wandb_refuses_is_one_error_line_before_any_work(script, checkpoint, tmp_path):
    args = ["--checkpoint", str(checkpoint)] if script == "explain/run.py" else ["sweeps/lr.yaml", "--count=1"]
    result = run_cli(*args, script=script, timeout=300, env={"WANDB_MODE": "fast"})
    assert result.returncode == 2 and result.stderr.startswith("error: environment variable WANDB_MODE='fast' is "
                                                               "refused by W&B"), result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_stop_while_explaining_is_not_a_success(small_checkpoint, tmp_path):
    """SIGTERM during the explain work (a training run's SIGTERM is a clean, resumable stop: 0; an explain run has no
    resume and its outputs are incomplete): status 143, one stopped: line, no summary.json (issue 37 item 9)."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "explain/run.py", "--checkpoint", str(small_checkpoint),
                                "--out_dir", str(out), "--trust_images=64", "--wandb_mode=disabled"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=os.environ | {"PYTHONUNBUFFERED": "1"})
    start = process.stdout.readline()  # the start line: the work begins
    assert start.startswith("explaining "), start + process.stderr.read()[-2000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("stopped: SIGTERM while explaining;")
    assert "Traceback" not in stderr
    assert not (out / "summary.json").exists()
