"""The shared real training run (tests/conftest.py's ``trained``), read back from disk and from its offline W&B run;
what a finished run refuses to do again."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch

import train  # noqa: F401
from tests.conftest import REPO, call_cli, history, logged_summary, wandb_records, wandb_summary
from train.config import Config
from train.tracking import read_metrics

EPOCH_KEYS = ("epoch", "train/loss", "train/acc", "val/loss", "val/acc", "val/acc_no_tta", "lr", "epoch_seconds",
              "train/images_per_second")

pytestmark = pytest.mark.slow


def test_run_exits_0_and_learns(trained):
    result, out, summary = trained["result"], trained["out"], trained["summary"]
    for key in ("test_acc", "best_test_acc", "epochs", "train_seconds", "train_images_per_second", "wandb_run_id",
                "wandb_run_dir"):
        assert key in summary
    assert summary["epochs"] == 2
    assert 0.15 < summary["test_acc"] <= 1 and summary["test_acc"] <= summary["best_test_acc"] <= 1  # chance: 0.10
    assert summary["train_seconds"] > summary["train_step_seconds"] > 0 and summary["train_images_per_second"] > 0
    # images/s is over the steps alone: 1,000 images x 2 epochs
    assert summary["train_images_per_second"] == pytest.approx(2000 / summary["train_step_seconds"], rel=0.01)
    assert summary["compile_seconds"] == 0.0  # no --compile
    assert "epoch 1/2" in result.stdout and "epoch 2/2" in result.stdout  # one plain line per epoch off a terminal
    # the resolved recipe: 0.1 x 50/128, a fifth of 2 epochs, the defaults of the rest
    assert ("batch 50, lr 0.03906, 0.4 warm-up epochs, label smoothing 0.1, random flips, whitened stem, 16->32 px "
            "over the first epoch; out_dir" in result.stdout)
    config = json.loads((out / "config.json").read_text())  # the resolved config, as W&B's holds it
    assert config["batch_size"] == 50 and config["lr"] == 0.0390625 and config["warmup_epochs"] == 0.4
    assert config["stem_init"] == "whiten"  # auto, resolved
    logged = wandb_summary(trained["run_dir"])["config"]
    assert config == {key: value for key, value in logged.items() if key != "_wandb"}
    for picture in ("misclassified.png", "gradcam.png", "confusion_matrix.png"):
        assert (out / picture).stat().st_size > 10_000, picture
    assert summary["explain"]["explained"] == 8
    # figures as the decimals they are: accuracies are fractions of 200 images, no float32 noise (0.22699999809265137)
    assert all(len(repr(summary[key])) <= 6 for key in ("test_acc", "test_acc_no_tta", "best_test_acc"))
    assert "99999999" not in (out / "summary.json").read_text() + (out / "metrics.jsonl").read_text()
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))  # released, nothing half written


def test_checkpoints_load_safely_best_holds_the_model_and_last_becomes_a_small_record(trained, tmp_path):
    """By default (--keep_checkpoints best) a finished run keeps best.pt, and last.pt shrinks to the run's record
    (no weights, no optimizer state): a finished run is never continued."""
    out = trained["out"]
    last = torch.load(out / "last.pt", weights_only=True)
    assert set(last) == {"format", "finished", "config", "epoch", "metrics", "classes", "run_uid", "data", "state"}
    assert last["finished"] is True and (out / "last.pt").stat().st_size < 100_000
    assert last["epoch"] == 2 and last["state"]["epoch"] == 2 and len(last["state"]["history"]) == 2
    assert last["config"]["lr"] == pytest.approx(0.0390625) and last["config"]["warmup_epochs"] == pytest.approx(0.4)
    best = torch.load(out / "best.pt", weights_only=True)
    assert set(best) == {"format", "model", "config", "epoch", "metrics", "classes", "run_uid", "data"}
    assert best["data"] == last["data"] and set(best["data"]) == set(best["classes"])  # the data it was trained on
    assert best["run_uid"] == last["run_uid"] == last["state"]["run_uid"]
    model = timm.create_model(best["config"]["model"], num_classes=len(best["classes"]))
    model.load_state_dict(best["model"])
    assert best["metrics"]["val/acc"] == trained["summary"]["best_test_acc"]
    mask = __import__("os").umask(0)
    __import__("os").umask(mask)
    assert (out / "last.pt").stat().st_mode & 0o777 == 0o666 & ~mask  # like any other file, not 0600
    # the record is no model: a user of the model is sent to best.pt
    refused = call_cli("--checkpoint", str(out / "last.pt"), f"--out_dir={tmp_path / 'x'}", "--wandb_mode=disabled",
                       script="explain/run.py")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: checkpoint {str(out / 'last.pt')!r} is a finished run's record and holds no weights (a run keeps "
        f"its last.pt whole only with --keep_checkpoints all); use the run's best.pt ({out / 'best.pt'})"]
    assert not (tmp_path / "x").exists()


def test_metrics_jsonl_is_the_w_and_b_stream(trained):
    rows = [row for row in history(wandb_records(trained["run_dir"])) if "train/loss" in row]
    metrics = [row for row in read_metrics(trained["out"] / "metrics.jsonl") if "train/loss" in row]
    assert [row["epoch"] for row in metrics] == [1, 2]
    for logged, written in zip(rows, metrics, strict=True):
        for key in EPOCH_KEYS:
            assert logged[key] == pytest.approx(written[key]), key


def test_wandb_run_has_every_epoch_key_once_per_epoch(trained):
    summary, run_dir = trained["summary"], trained["run_dir"]
    assert run_dir.name.startswith("offline-run-") and run_dir.name.endswith(summary["wandb_run_id"])
    all_rows = history(wandb_records(run_dir))
    rows = [row for row in all_rows if "train/loss" in row]
    assert [row["epoch"] for row in rows] == [1, 2]
    for key in EPOCH_KEYS[1:]:
        assert sum(key in row for row in all_rows) == 2, key
    assert [row["_step"] for row in all_rows] == sorted({row["_step"] for row in all_rows})  # one row per step
    for key in ("explain/confusion_matrix_table", "explain/confusion_matrix_image", "explain/label_issues"):
        assert f"{key}._type" in all_rows[-1], key  # the explain step joins the last epoch's row (keys flattened)
    tables = logged_summary(wandb_records(run_dir))
    for key in ("explain/misclassified", "explain/per_class_acc", "explain/most_confused", "explain/sanity",
                "probes/summary"):  # plain tables: in the summary, none of their fields in the metrics' history
        assert tables[f"{key}._type"] == "table-file", key
        assert not any(field.startswith(f"{key}.") for row in all_rows for field in row), key
    assert tables["explain/misclassified.nrows"] == 8 and all_rows[-1]["epoch"] == 2
    assert rows[-1]["val/acc"] == pytest.approx(summary["test_acc"])

    state = wandb_summary(run_dir)
    assert state["state"] == "finished" and state["run_id"] == summary["wandb_run_id"]
    assert state["summary"]["best_val_acc"] == pytest.approx(summary["best_test_acc"])
    config = state["config"]
    assert set(config) - {"_wandb"} == {f.name for f in Config.__dataclass_fields__.values()}
    assert config["lr"] == pytest.approx(0.0390625) and config["epochs"] == 2 and config["run_name"] == "real-run"


def test_best_checkpoint_is_the_model_artifact(trained):
    summary = trained["summary"]
    artifacts = [r["artifact"] for r in wandb_records(trained["run_dir"]) if r["type"] == "artifact"]
    models = [a for a in artifacts if a["type"] == "model"]
    assert len(models) == 1 and models[0]["name"] == f"model-{summary['wandb_run_id']}"
    assert "best" in models[0]["aliases"]
    metadata = json.loads(models[0]["metadata"])
    assert metadata["config"]["epochs"] == 2 and "val/acc" in metadata["metrics"] and len(metadata["classes"]) == 10
    assert [c["path"] for c in models[0]["manifest"]["contents"]] == ["best.pt"]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_a_finished_run_is_left_alone(trained, tmp_path):
    out, before = trained["out"], digests(trained["out"])
    runs_before = set(trained["wandb_dir"].glob("*run-*"))
    env = trained["env"]
    done = call_cli("--resume", str(out / "last.pt"), "--explain_samples=0", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith(f"nothing to resume: {out / 'last.pt'} finished all 2")
    again = call_cli("--data_dir", "x", "--out_dir", str(out), env=env)  # a new run into its folder
    assert again.returncode == 2 and (f"already holds a run; it finished (explain it with python explain/run.py "
                                      f"--checkpoint {out / 'best.pt'})") in again.stderr  # not --resume: nothing to
    changed = call_cli("--resume", str(out / "last.pt"), "--lr=0.5", env=env)
    assert changed.returncode == 2 and "--lr cannot change when resuming" in changed.stderr
    assert digests(out) == before and set(trained["wandb_dir"].glob("*run-*")) == runs_before  # nothing touched


def test_ruff_stays_clean_beside_a_run_folder(trained, tmp_path):
    """A ./wandb/ folder of offline runs in the project root must not make ruff take wandb for a first-party module."""
    for part in ("train", "explain", "sweeps", "tests", "bench", "ruff.toml", "pyproject.toml"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)
    shutil.copytree(trained["run_dir"], tmp_path / "wandb" / trained["run_dir"].name)
    result = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]


def test_the_default_batch_is_fitted_to_a_small_training_set_and_recorded(cifar_subset, tmp_path):
    """Issue 28 item 9: at the default batch of 512 a 200-image epoch would be no step at all (and 3,000 images, 5
    steps at lr 0.4, diverged: bench/results/small_data.json); without --batch_size the run fits it and W&B, the
    checkpoint and the start line say what trained."""
    out = tmp_path / "out"
    done = call_cli("--data_dir", str(cifar_subset), "--train_subset=200", "--test_subset=100", "--epochs=1",
                    "--explain_samples=0", "--probe_images=0", f"--out_dir={out}", "--wandb_mode=offline",
                    env={"WANDB_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    config = torch.load(out / "best.pt", weights_only=True)["config"]
    assert config["batch_size"] == 32 and config["lr"] == pytest.approx(0.025)  # 6 steps, lr scaled with it
    assert "lr 0.025," in done.stdout
    logged = wandb_summary(json.loads((out / "summary.json").read_text())["wandb_run_dir"])["config"]
    assert logged["batch_size"] == 32 and logged["lr"] == pytest.approx(0.025)


@pytest.mark.slow
def test_keep_checkpoints_all_keeps_the_resumable_state_and_none_keeps_no_weights(cifar_subset, tmp_path):
    """Issue 28 item 12: --keep_checkpoints all keeps last.pt whole (optimizer state included); none keeps no weights
    and logs no W&B model; either way the finished run is recognized as finished. W&B reads best.pt in place: its
    staging folder holds no second copy of the model."""
    tiny = ["--data_dir", str(cifar_subset), "--train_subset=200", "--test_subset=100", "--epochs=1",
            "--explain_samples=0", "--probe_images=0", "--wandb_mode=offline"]
    env = {"WANDB_DIR": str(tmp_path), "WANDB_DATA_DIR": str(tmp_path / "data")}
    for keep in ("all", "none"):
        out = tmp_path / keep
        done = call_cli(*tiny, f"--out_dir={out}", f"--keep_checkpoints={keep}", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        last = torch.load(out / "last.pt", weights_only=True)
        models = [r for r in wandb_records(json.loads((out / "summary.json").read_text())["wandb_run_dir"])
                  if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
        if keep == "all":
            assert {"model", "optimizer", "scheduler", "rng", "state"} <= set(last) and "finished" not in last
            assert (out / "best.pt").stat().st_size > 10_000_000 and len(models) == 1
        else:
            assert last["finished"] is True and "model" not in last and not (out / "best.pt").exists()
            assert models == [] and sum(p.stat().st_size for p in out.iterdir()) < 1_000_000
        again = call_cli("--resume", "auto", f"--out_dir={out}", env=env)
        assert again.returncode == 0 and again.stdout.strip().splitlines()[-1].startswith(
            f"nothing to resume: {out / 'last.pt'} finished all 1 epochs"), again.stdout + again.stderr
        if keep == "none":  # its record is no model, and no best.pt exists to send the user to (issue 37 item 7)
            refused = call_cli("--checkpoint", str(out / "last.pt"), f"--out_dir={tmp_path / 'x'}",
                               "--wandb_mode=disabled", script="explain/run.py")
            assert refused.returncode == 2 and refused.stderr.strip().endswith(
                "and this run kept no weights (--keep_checkpoints none, as sweep trials do): there is no model to "
                "load; train again with --keep_checkpoints best"), refused.stderr
    staged = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
    assert staged == []
