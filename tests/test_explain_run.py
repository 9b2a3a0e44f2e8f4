"""explain/run.py on the checkpoint of a real training run, read back from disk and from the offline W&B run; bad
input is one ``error:`` line and exit status 2."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import train  # noqa: F401  (registers resnet18_cifar)
from explain import run as explain_run
from explain.report import COLUMNS
from tests.conftest import run_cli, wandb_records, wandb_summary
from tests.test_report import explain_row, image_cell, logged_table
from train.checkpoint import save_checkpoint
from train.config import Config
from train.data import load_data

PICTURES = ("misclassified.png", "gradcam.png", "confusion_matrix.png")


# ---------------------------------------------------------------------------------------------------------------------
# A real run, then explain/run.py on its best.pt


@pytest.fixture(scope="module")
def explained(trained, tmp_path_factory):
    """``python explain/run.py --checkpoint best.pt`` with every other setting left to its default, on a copy of
    the shared run's ``best.pt`` (the pictures go next to it)."""
    root = tmp_path_factory.mktemp("explain")
    folder = root / "copy"
    folder.mkdir()
    shutil.copy(trained["out"] / "best.pt", folder / "best.pt")
    result = run_cli("--checkpoint", str(folder / "best.pt"), script="explain/run.py", env={"WANDB_DIR": str(root)})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    return {"result": result, "run_dir": runs[0], "records": wandb_records(runs[0]), "out": folder,
            "checkpoint": folder / "best.pt"}


@pytest.mark.slow
def test_explain_writes_the_pictures_next_to_the_checkpoint(explained):
    result, out = explained["result"], explained["out"]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("explained ") and "200 test images" in lines[0]
    assert "Traceback" not in result.stderr
    for name in PICTURES:
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300


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
    row = explain_row(records)
    for key in ("explain/confusion_matrix_table", "explain/per_class_acc", "explain/most_confused"):
        assert row[f"{key}._type"] == "table-file"
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
    assert result.stdout.startswith("explained 4 of ")
    assert sorted(p.name for p in out.iterdir()) == sorted(PICTURES)  # --trust=False: no faithfulness/sanity PNGs
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
    return {name: str(folder / name) for name in [*files, "foreign.pt"]}


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
    "bad-data-dir": (["--checkpoint", "@ckpt"], "--data_dir '.*no-data' has no train/ and test/ folders"),
    "no-checkpoint": (["--explain_samples=3"], "required: --checkpoint"),
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


def test_bad_input_from_the_command_line_has_no_traceback(checkpoint, tmp_path):
    result = run_cli("--checkpoint", bad_files(tmp_path, checkpoint)["text.pt"], script="explain/run.py", timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
