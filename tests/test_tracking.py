"""Tracking: the mode never prompts, one row per epoch, offline runs read back with wandb leet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, history, logged_summary, wandb_records, wandb_summary
from train.tracking import Tracker, epoch_row, read_metrics, resolve_mode

TRAIN = {"loss": 1.5, "acc": 0.4, "images": 100, "seconds": 2.0, "images_per_second": 50.0, "lr": 0.1}
VAL = {"loss": 1.2, "acc": 0.5, "acc_no_tta": 0.45, "images": 50, "seconds": 1.0}


def test_epoch_row_has_exactly_the_logged_keys():
    row = epoch_row(3, TRAIN, VAL)
    assert row == {"epoch": 3, "train/loss": 1.5, "train/acc": 0.4, "val/loss": 1.2, "val/acc": 0.5,
                   "val/acc_no_tta": 0.45, "lr": 0.1, "epoch_seconds": 3.0, "train/images_per_second": 50.0}


def test_auto_mode_is_offline_without_credentials_and_online_with_them(monkeypatch):
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"
    # in a process of its own: wandb.login keeps a key it found for the rest of the process
    code = ("import os; from train.tracking import resolve_mode; print(resolve_mode('auto'))\n"
            "del os.environ['WANDB_MODE']; print(resolve_mode('auto'))")
    env = {**__import__("os").environ, "WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["offline", "online"]  # WANDB_MODE wins; credentials alone mean online


def test_offline_run_logs_epochs_against_the_epoch_axis():
    tracker = Tracker({"lr": 0.1}, mode="auto", project="test", name="t")
    assert tracker.mode == "offline"
    for epoch in (1, 2):
        tracker.log(epoch_row(epoch, TRAIN, VAL))
    tracker.summary({"best_val_acc": 0.5})
    run_dir = tracker.dir
    tracker.finish()
    records = wandb_records(run_dir)
    assert [row["epoch"] for row in history(records)] == [1, 2]
    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    assert {"glob_name": "*", "options": {"defined": True, "step_sync": True}, "step_metric": "epoch"} in metrics
    summary = wandb_summary(run_dir)
    assert summary["config"]["lr"] == 0.1 and summary["summary"]["best_val_acc"] == 0.5


def test_disabled_and_non_zero_ranks_log_nothing():
    for tracker in (Tracker({}, mode="disabled"), Tracker({}, enabled=False)):
        tracker.log({"epoch": 1})
        tracker.finish()
        assert tracker.id is None and tracker.dir is None


def test_unreachable_server_falls_back_to_an_offline_run(tmp_path):
    """In a process of its own (as a training run is): W&B's login state would leak into the other tests."""
    code = ("from train.tracking import Tracker, epoch_row\n"
            f"TRAIN, VAL = {TRAIN!r}, {VAL!r}\n"
            "tracker = Tracker({'lr': 0.1}, mode='online', project='test')\n"
            "print(tracker.mode, tracker.dir)\n"
            "tracker.log(epoch_row(1, TRAIN, VAL))\n"
            "tracker.finish()\n")
    env = {**__import__("os").environ, "WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_INIT_TIMEOUT": "5"}  # nothing listens on port 9
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    mode, run_dir = result.stdout.split()
    assert mode == "offline" and "warning: W&B online init failed" in result.stderr
    assert [row["epoch"] for row in history(wandb_records(run_dir))] == [1]
    assert "wandb sync" in result.stderr


def test_plain_tables_go_to_the_summary_so_the_metrics_view_holds_only_metrics():
    import wandb

    tracker = Tracker({}, mode="offline", project="test")
    growing = wandb.Table(columns=["a"], log_mode="INCREMENTAL")
    growing.add_data(1)
    tracker.log({"epoch": 1, "val/acc": 0.5, "explain/per_class_acc": wandb.Table(columns=["a"], data=[[1], [2]]),
                 "explain/label_issues": wandb.Table(columns=["a"], data=[[3]]), "explain/images": growing,
                 "explain/curves": wandb.plot.line_series(xs=[0, 1], ys=[[0.1, 0.2]], keys=["cam"])})
    tracker.log({"explain/per_class_acc": wandb.Table(columns=["a"], data=[[1], [2], [3]])})  # a table alone: no row
    run_dir = tracker.dir
    tracker.finish()
    records = wandb_records(run_dir)
    rows, summary = history(records), logged_summary(records)
    assert len(rows) == 1 and rows[0]["val/acc"] == 0.5
    assert summary["explain/per_class_acc._type"] == "table-file" and summary["explain/per_class_acc.nrows"] == 3
    assert not any(key.startswith("explain/per_class_acc") for key in rows[0])
    # kept in history: an incremental table (its rows arrive as steps), a custom chart's table (W&B cannot store a
    # chart in the summary) and explain/label_issues (its summary key holds the issue count)
    assert rows[0]["explain/images._type"] == "incremental-table-file"
    assert rows[0]["explain/curves_table._type"] == "table-file"
    assert rows[0]["explain/label_issues._type"] == "table-file"


def test_the_model_artifact_names_the_checkpoint_by_absolute_path(tmp_path, monkeypatch):
    """An --out_dir given relative (the default runs/<name>) must not make `wandb sync` from another folder miss
    the model: W&B reads an immutable artifact file where its record says."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "best.pt").write_bytes(b"weights")
    tracker = Tracker({}, mode="offline", project="test")
    tracker.log_model(Path("runs") / "best.pt", metadata={}, aliases=["best"])
    run_dir = tracker.dir
    tracker.finish()
    entries = [entry for record in wandb_records(run_dir) if record["type"] == "artifact"
               for entry in record["artifact"]["manifest"]["contents"]]
    assert [entry["local_path"] for entry in entries] == [str(tmp_path / "runs" / "best.pt")]


def test_a_failing_logging_call_warns_and_training_goes_on(capsys):
    tracker = Tracker({"lr": 0.1}, mode="offline", project="test")
    tracker.run.finish()  # the run goes away under the tracker's feet: W&B refuses further calls
    tracker.log(epoch_row(1, TRAIN, VAL))
    tracker.summary({"best_val_acc": 0.5})
    tracker.finish()
    err = capsys.readouterr().err
    assert "warning: W&B log failed" in err and "continuing without W&B" in err
    # the failure W&B gives at once, not the 30 s timeout of asking a finished run its step (`run.step`)
    assert "is finished" in err and "TimeoutError" not in err, err
    assert tracker.run is None


def test_epoch_rows_go_to_metrics_jsonl_in_every_mode(tmp_path):
    for mode in ("offline", "disabled"):
        path = tmp_path / f"{mode}.jsonl"
        tracker = Tracker({"lr": 0.1}, mode=mode, project="test", metrics_file=path)
        picture = np.zeros((8, 8, 3), np.uint8)
        for epoch in (1, 2):
            tracker.log_epoch(epoch_row(epoch, TRAIN, VAL), images={"probes/0_cat": (picture, f"epoch {epoch}")})
        run_dir = tracker.dir
        tracker.finish()
        assert read_metrics(path) == [epoch_row(1, TRAIN, VAL), epoch_row(2, TRAIN, VAL)]  # scalars only
        if mode == "offline":
            rows = history(wandb_records(run_dir))
            assert [row["epoch"] for row in rows] == [1, 2] and rows[0]["probes/0_cat._type"] == "image-file"
    with open(path, "a") as file:
        file.write(json.dumps({"epoch": 3})[:5])  # a line still being written is not read
    assert len(read_metrics(path)) == 2


def test_a_resumed_stream_holds_each_epoch_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [epoch_row(e, TRAIN, VAL) for e in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # epoch 3 logged, but last.pt holds only 1-2
    tracker = Tracker({}, mode="offline", project="test", metrics_file=path)
    tracker.continue_from(rows[:2])
    tracker.log_epoch(rows[2])
    run_dir = tracker.dir
    tracker.finish()
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2, 3]
    assert [r["epoch"] for r in history(wandb_records(run_dir))] == [1, 2, 3]  # offline: the part holds the run


@pytest.mark.parametrize("name,value,message", [
    ("WANDB_MODE", "garbage", "environment variable WANDB_MODE='garbage' is refused by W&B: Input should be 'online'"),
    ("WANDB_RUN_ID", "a/b", "environment variable WANDB_RUN_ID='a/b' is refused by W&B: Run ID cannot contain"),
    ("WANDB_INIT_TIMEOUT", "soon", "environment variable WANDB_INIT_TIMEOUT='soon' is refused by W&B: Input should be "
                                   "a valid number"),
    ("WANDB_DIR", "{file}", "environment variable WANDB_DIR='{file}' names a file; W&B needs a folder there"),
])
def test_wandb_variables_w_and_b_refuses_are_one_error_line(name, value, message, tmp_path, monkeypatch, capsys):
    from train.config import ConfigError
    from train.run import main

    file = tmp_path / "a-file"
    file.write_text("not a folder")
    monkeypatch.setenv(name, value.format(file=file))
    assert main(["--data_dir", str(tmp_path / "never-read"), "--out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(file=file)}") and err.count("\n") == 1, err
    assert not (tmp_path / "never-read").exists() and not (tmp_path / "out").exists()  # refused before any work
    with pytest.raises(ConfigError, match=name):  # explain's and sweeps' trackers refuse it too
        Tracker({}, mode="offline", project="test")


def test_float32_figures_are_written_as_the_decimals_they_are(tmp_path):
    import torch

    from train.files import write_json

    noisy = torch.tensor(0.227).item()  # a float32 figure widened to a double: 0.22699999809265137
    assert repr(noisy) != "0.227"
    row = epoch_row(1, {**TRAIN, "loss": noisy, "seconds": 1 / 3}, {**VAL, "acc": noisy})
    assert row["train/loss"] == row["val/acc"] == 0.227 and row["epoch_seconds"] == 1.333
    Tracker({}, mode="disabled", metrics_file=tmp_path / "metrics.jsonl").log_epoch({"epoch": 1, "val/acc": noisy})
    write_json(tmp_path / "summary.json", {"test_acc": noisy, "explain": {"deletion": [noisy, 0.1]}})
    for name in ("metrics.jsonl", "summary.json"):
        text = (tmp_path / name).read_text()
        assert "0.227" in text and "0.22699999" not in text, text
