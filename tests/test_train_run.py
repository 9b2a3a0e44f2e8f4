"""Real training runs on the JPEG CIFAR-10 copy, read back from disk and from the offline W&B run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import wandb

import train  # noqa: F401
from tests.conftest import REPO, history, run_cli, wandb_records, wandb_summary
from train.config import Config

EPOCH_KEYS = ("epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_seconds",
              "train/images_per_second")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(cifar_jpeg, tmp_path_factory):
    """2,000 train / 1,000 test real images, 2 epochs on the CPU: the default recipe, scaled down."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_cli("--data_dir", str(cifar_jpeg), "--train_subset=2000", "--test_subset", "1000", "--epochs=2",
                     "--batch_size=100", "--lr=0.1", "--warmup_epochs=0.5", "--explain_samples=16",
                     "--out_dir", str(out), "--run_name=real-run")
    return result, out


def test_run_exits_0_and_learns(real_run):
    result, out = real_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_acc", "best_test_acc", "epochs", "train_seconds", "train_images_per_second", "wandb_run_id",
                "wandb_run_dir"):
        assert key in summary
    assert summary["epochs"] == 2
    assert 0.15 < summary["test_acc"] <= 1 and summary["test_acc"] <= summary["best_test_acc"] <= 1  # chance: 0.10
    assert summary["train_seconds"] > 0 and summary["train_images_per_second"] > 0
    assert summary["compile_seconds"] == 0.0  # no --compile
    assert "epoch 1/2" in result.stdout and "epoch 2/2" in result.stdout  # one plain line per epoch off a terminal
    for picture in ("misclassified.png", "gradcam.png", "confusion_matrix.png"):
        assert (out / picture).stat().st_size > 10_000, picture
    assert summary["explain"]["explained"] == 16


def test_checkpoints_load_safely_and_rebuild_the_model(real_run):
    _, out = real_run
    for name in ("last.pt", "best.pt"):
        state = torch.load(out / name, weights_only=True)
        for key in ("model", "config", "epoch", "metrics", "optimizer", "scheduler", "rng", "wandb_run_id"):
            assert key in state, key
        model = timm.create_model(state["config"]["model"], num_classes=len(state["classes"]))
        model.load_state_dict(state["model"])
        assert state["config"]["lr"] == 0.1 and state["config"]["train_subset"] == 2000
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


def test_wandb_run_has_every_epoch_key_once_per_epoch(real_run):
    _, out = real_run
    summary = json.loads((out / "summary.json").read_text())
    run_dir = Path(summary["wandb_run_dir"])
    assert run_dir.name.startswith("offline-run-") and run_dir.name.endswith(summary["wandb_run_id"])
    all_rows = history(wandb_records(run_dir))
    rows = [row for row in all_rows if "train/loss" in row]
    assert [row["epoch"] for row in rows] == [1, 2]
    for key in EPOCH_KEYS[1:]:
        assert sum(key in row for row in all_rows) == 2, key
    assert len(all_rows) == 2 and [row["_step"] for row in all_rows] == [1, 2]  # W&B step = epoch, one row each
    for key in ("explain/misclassified", "explain/confusion_matrix_table", "explain/confusion_matrix_image",
                "explain/per_class_acc", "explain/most_confused"):
        assert f"{key}._type" in all_rows[-1], key  # the explain step joins the last epoch's row (keys flattened)
    assert all_rows[-1]["explain/misclassified._type"] == "table-file"
    assert all_rows[-1]["explain/misclassified.nrows"] == 16
    for row in rows:
        assert 0 <= row["train/acc"] <= 1 and 0 <= row["val/acc"] <= 1
    assert rows[-1]["val/acc"] == pytest.approx(summary["test_acc"])

    state = wandb_summary(run_dir)
    assert state["state"] == "finished" and state["run_id"] == summary["wandb_run_id"]
    assert state["summary"]["best_val_acc"] == pytest.approx(summary["best_test_acc"])
    config = state["config"]
    assert set(config) - {"_wandb"} == {f.name for f in Config.__dataclass_fields__.values()}
    assert config["lr"] == 0.1 and config["epochs"] == 2 and config["run_name"] == "real-run"


def test_best_checkpoint_is_a_model_artifact(real_run):
    _, out = real_run
    summary = json.loads((out / "summary.json").read_text())
    artifacts = [r["artifact"] for r in wandb_records(summary["wandb_run_dir"]) if r["type"] == "artifact"]
    models = [a for a in artifacts if a["type"] == "model"]
    assert len(models) == 1 and models[0]["name"] == f"model-{summary['wandb_run_id']}"
    assert "best" in models[0]["aliases"]
    metadata = json.loads(models[0]["metadata"])
    assert metadata["config"]["lr"] == 0.1 and "val/acc" in metadata["metrics"]
    assert [c["path"] for c in models[0]["manifest"]["contents"]] == ["best.pt"]


def test_kill_9_then_resume_continues_with_the_same_wandb_run(cifar_jpeg, tmp_path):
    # The parent's own W&B service (a notebook, this test runner) is exported as WANDB_SERVICE; a training process
    # that joined it would leave the killed run's id registered there ("run ID ... is in use") and never resume.
    wandb.init(mode="offline", project="host", dir=str(tmp_path)).finish()
    assert os.environ.get("WANDB_SERVICE")
    out = tmp_path / "out"
    args = ["--data_dir", str(cifar_jpeg), "--train_subset=300", "--test_subset=100", "--epochs=3",
            "--batch_size=50", "--explain_samples=0", "--deterministic=True", "--out_dir", str(out)]
    proc = subprocess.Popen([sys.executable, "train/run.py", *args], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = torch.load(out / "last.pt", weights_only=True)
    assert first["epoch"] >= 1

    again = run_cli(*args, timeout=120)  # a new run into the same folder must not clobber it
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == first["epoch"]

    changed = run_cli("--resume", str(out / "last.pt"), "--lr=0.5", timeout=120)
    assert changed.returncode == 2 and "--lr cannot change when resuming" in changed.stderr

    resumed = run_cli("--resume", "auto", "--out_dir", str(out), timeout=600)  # finds out/last.pt
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--resume auto: continuing {out / 'last.pt'}" in resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["wandb_run_id"] == first["wandb_run_id"]
    assert f"epoch {first['epoch'] + 1}/3" in resumed.stdout and f"epoch {first['epoch']}/3" not in resumed.stdout
    # the resumed offline part holds the whole run: the finished epochs replayed from the checkpoint, then the rest
    rows = [row for row in history(wandb_records(summary["wandb_run_dir"])) if "train/loss" in row]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and [row["_step"] for row in rows] == [1, 2, 3]
    assert [row["val/acc"] for row in rows[:first["epoch"]]] == [r["val/acc"] for r in first["history"]]
    parts = sorted((Path(os.environ["WANDB_DIR"]) / "wandb").glob(f"offline-run-*-{first['wandb_run_id']}*"))
    assert len(parts) == 2 and summary["wandb_run_dir"] in map(str, parts)  # same id; the killed part is kept too

    # --deterministic: the interrupted-and-resumed run ends exactly where an uninterrupted one does
    whole = run_cli(*args[:-1], str(tmp_path / "whole"), timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = (torch.load(path / "last.pt", weights_only=True) for path in (out, tmp_path / "whole"))
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert a["metrics"][key] == b["metrics"][key], key
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_sigterm_stops_cleanly_and_keeps_the_finished_epochs(cifar_jpeg, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "train/run.py", "--data_dir", str(cifar_jpeg), "--train_subset=300",
                             "--test_subset=100", "--epochs=20", "--batch_size=50", "--explain_samples=0",
                             "--out_dir", str(out)], cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the stop lands the moment epoch 1's row is in W&B, before its checkpoint is written
        if line.startswith("epoch 1/20"):
            proc.send_signal(signal.SIGTERM)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped: SIGTERM during epoch 2: that epoch was abandoned; epochs 1-1 are saved" in stderr
    assert "Traceback" not in stderr
    saved = torch.load(out / "last.pt", weights_only=True)  # the logged epoch was saved before the stop took effect
    assert saved["epoch"] == 1 and f"--resume {out / 'last.pt'}" in stderr
    assert not (out / "summary.json").exists()
    run_dir = next((Path(os.environ["WANDB_DIR"]) / "wandb").glob(f"offline-run-*-{saved['wandb_run_id']}"))
    state = wandb_summary(run_dir)
    assert state["exit_code"] == 128 + signal.SIGTERM
