"""Tracking: the mode never prompts, one row per epoch, offline runs read back with wandb leet."""

from __future__ import annotations

from tests.conftest import history, wandb_records, wandb_summary
from train.tracking import Tracker, epoch_row, resolve_mode

TRAIN = {"loss": 1.5, "acc": 0.4, "images": 100, "seconds": 2.0, "images_per_second": 50.0, "lr": 0.1}
VAL = {"loss": 1.2, "acc": 0.5, "acc_no_tta": 0.45, "images": 50, "seconds": 1.0}


def test_epoch_row_has_exactly_the_logged_keys():
    row = epoch_row(3, TRAIN, VAL)
    assert row == {"epoch": 3, "train/loss": 1.5, "train/acc": 0.4, "val/loss": 1.2, "val/acc": 0.5,
                   "val/acc_no_tta": 0.45, "lr": 0.1, "epoch_seconds": 3.0, "train/images_per_second": 50.0}


def test_auto_mode_is_offline_without_credentials_and_online_with_them(monkeypatch):
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"


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


def test_unreachable_server_falls_back_to_an_offline_run(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    tracker = Tracker({"lr": 0.1}, mode="online", project="test")
    assert tracker.mode == "offline" and tracker.id
    assert "W&B online init failed" in capsys.readouterr().err
    tracker.log(epoch_row(1, TRAIN, VAL))
    run_dir = tracker.dir
    tracker.finish()
    assert [row["epoch"] for row in history(wandb_records(run_dir))] == [1]
    assert "wandb sync" in capsys.readouterr().err


def test_a_failing_logging_call_warns_and_training_goes_on(capsys):
    tracker = Tracker({"lr": 0.1}, mode="offline", project="test")
    tracker.run.finish()  # the run goes away under the tracker's feet: W&B refuses further calls
    tracker.log(epoch_row(1, TRAIN, VAL))
    tracker.summary({"best_val_acc": 0.5})
    tracker.finish()
    err = capsys.readouterr().err
    assert "warning: W&B log failed" in err and "continuing without W&B" in err
    assert tracker.run is None
