"""``torchrun`` on the CPU: two gloo processes on real images train what one process trains, as one run.

torch has no CPU SyncBatchNorm, so on the CPU each process normalizes over its own slice of the batch (GPUs use
SyncBatchNorm). The exact-equality test therefore trains a model without batch statistics (timm's ``convnext_atto``,
LayerNorm); the ``resnet18_cifar`` test checks one W&B run, one set of checkpoints and resume under torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, history, run_cli, wandb_records

pytestmark = pytest.mark.slow
METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_no_tta")


def torchrun(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train/run.py", *args], cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wandb_runs() -> set[Path]:
    return set((Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*"))


def test_two_processes_train_exactly_what_one_process_trains(cifar_subset, tmp_path):
    flags = ["--data_dir", str(cifar_subset), "--train_subset=200", "--test_subset=100", "--epochs=2",
             "--batch_size=50", "--lr=0.05", "--warmup_epochs=0", "--explain_samples=0", "--model=convnext_atto",
             "--probe_images=0", "--keep_checkpoints=all",  # the final weights, to compare
             "--device=cpu", "--precision=fp32"]
    before = wandb_runs()
    proc = torchrun(*flags, f"--out_dir={tmp_path / 'ddp'}")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    created = wandb_runs() - before
    single = run_cli(*flags, f"--out_dir={tmp_path / 'one'}", timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]

    assert stdout.count("epoch 1/2 ") == 1 and "2 processes (DDP)" in stdout  # only rank 0 prints
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["best.pt", "config.json", "last.pt",
                                                                     "metrics.jsonl", "summary.json"]
    ddp, one = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("ddp", "one"))
    # all-reduced metrics of the same global batches
    for a, b in zip(ddp["state"]["history"], one["state"]["history"], strict=True):
        for key in METRICS:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert ddp["model"].keys() == one["model"].keys()
    for key in one["model"]:
        torch.testing.assert_close(ddp["model"][key], one["model"][key], rtol=1e-3, atol=1e-3)  # float order

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert len(created) == 1 and str(next(iter(created))) == summary["wandb_run_dir"]  # one W&B run, rank 0's
    rows = [row for row in history(wandb_records(summary["wandb_run_dir"])) if "train/loss" in row]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["val/loss"] for row in rows] == [row["val/loss"] for row in ddp["state"]["history"]]


def test_torchrun_stops_and_resumes_the_same_run(cifar_subset, tmp_path):
    out = tmp_path / "out"
    flags = ["--data_dir", str(cifar_subset), "--train_subset=200", "--test_subset=100", "--epochs=2",
             "--batch_size=50", "--explain_samples=0", "--device=cpu", "--precision=fp32", f"--out_dir={out}",
             "--probe_images=4"]
    proc = torchrun(*flags)
    for line in proc.stdout:  # stop the whole job (torchrun forwards SIGTERM to every rank) after epoch 1
        if line.startswith("epoch 1/2"):
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=300)
    first = torch.load(out / "last.pt", weights_only=True)
    assert first["epoch"] == 1 and "stopped: SIGTERM" in stderr, stderr[-3000:]

    again = torchrun("--resume=auto", f"--out_dir={out}")
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-3000:]
    assert stdout.count(f"--resume auto: continuing {out / 'last.pt'}") == 1
    assert "epoch 2/2" in stdout and "epoch 1/2" not in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["wandb_run_id"] == first["state"]["wandb_run_id"]
    rows = [row for row in history(wandb_records(summary["wandb_run_dir"])) if "train/loss" in row]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl",
                                                     "probes.json", "summary.json"]  # rank 0's alone; no
    # pictures at --explain_samples 0, probes.png included
