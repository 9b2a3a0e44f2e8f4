"""A run's life in real processes: kill -9 and resume, stops at any moment, two processes on one folder, a full disk,
a copied checkpoint — nothing is overwritten, nothing is lost, every stop is one ``stopped:`` line."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb

from tests.conftest import REPO, call_cli, history, run_cli, wandb_records, wandb_summary
from train import offline_check
from train.tracking import read_metrics

pytestmark = pytest.mark.slow


def flags(data: Path, epochs: int = 3, **extra: str) -> list[str]:
    """A tiny real run: 120 training images (3 steps of 40), 40 test images, no explain, no probes."""
    return ["--data_dir", str(data), f"--epochs={epochs}", "--batch_size=40", "--explain_samples=0",
            "--probe_images=0", *[f"--{k}={v}" for k, v in extra.items()]]


def start(*args: str, cwd: Path = REPO, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train" / "run.py"), *args], cwd=cwd, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def communicate(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """The rest of the output; a process that does not end in time is killed (not left to load the machine)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def stop_after(proc: subprocess.Popen, prefix: str, sig: int = signal.SIGTERM, times: int = 1) -> tuple[str, str]:
    """Send ``sig`` the moment a stdout line starts with ``prefix``; the rest of the output."""
    for line in proc.stdout:
        if line.startswith(prefix):
            for _ in range(times):
                proc.send_signal(sig)
                time.sleep(0.05)
            break
    return communicate(proc)


def wandb_parts(run_id: str) -> list[Path]:
    return sorted((Path(os.environ["WANDB_DIR"]) / "wandb").glob(f"offline-run-*-{run_id}"))


def test_kill_9_then_resume_continues_with_the_same_wandb_run(small_folder, tmp_path):
    # The parent's own W&B service (a notebook, this test runner) is exported as WANDB_SERVICE; a training process
    # that joined it would leave the killed run's id registered there ("run ID ... is in use") and never resume.
    wandb.init(mode="offline", project="host", dir=str(tmp_path)).finish()
    assert os.environ.get("WANDB_SERVICE")
    out = tmp_path / "out"
    args = [*flags(small_folder, epochs=2, deterministic="True", keep_checkpoints="all"),  # the final state whole
            "--out_dir", str(out)]
    proc = subprocess.Popen([sys.executable, "train/run.py", *args], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = torch.load(out / "last.pt", weights_only=True)
    done, run_id = first["epoch"], first["state"]["wandb_run_id"]
    assert done >= 1 and (out / ".lock").exists()  # a killed process leaves its lock file: stale, not held

    resumed = run_cli("--resume", "auto", "--out_dir", str(out), timeout=600)  # finds out/last.pt
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--resume auto: continuing {out / 'last.pt'}" in resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert done == 1 and summary["epochs"] == 2 and summary["wandb_run_id"] == run_id
    assert "epoch 2/2" in resumed.stdout and "epoch 1/2" not in resumed.stdout
    # the resumed offline part holds the whole run: the finished epochs replayed from the checkpoint, then the rest
    rows = [row for row in history(wandb_records(summary["wandb_run_dir"])) if "train/loss" in row]
    assert [row["epoch"] for row in rows] == [1, 2] and [row["_step"] for row in rows] == [1, 2]
    assert rows[0]["val/acc"] == first["state"]["history"][0]["val/acc"]
    parts = wandb_parts(run_id)
    assert len(parts) == 2 and summary["wandb_run_dir"] in map(str, parts)  # same id; the killed part is kept too
    assert [row["epoch"] for row in read_metrics(out / "metrics.jsonl")] == [1, 2]  # each epoch once

    # --deterministic: the interrupted-and-resumed run ends exactly where an uninterrupted one does
    whole = run_cli(*args[:-1], str(tmp_path / "whole"), timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = (torch.load(path / "last.pt", weights_only=True) for path in (out, tmp_path / "whole"))
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert a["metrics"][key] == b["metrics"][key], key
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_sigterm_after_an_epoch_keeps_it_and_a_double_stop_stays_clean(small_folder, tmp_path):
    out = tmp_path / "out"
    proc = start(*flags(small_folder, epochs=20), "--out_dir", str(out))
    # the stop lands the moment epoch 1's row is out, and a second one right behind it
    stdout, stderr = stop_after(proc, "epoch 1/20", times=2)
    assert proc.returncode == 0, stderr[-2000:]
    assert f"stopped: SIGTERM during epoch 2: that epoch was abandoned; epoch 1 is saved; resume with --resume " \
           f"{out / 'last.pt'}" in stderr
    assert "Traceback" not in stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and not (out / "summary.json").exists() and not (out / ".lock").exists()
    state = wandb_summary(wandb_parts(saved["state"]["wandb_run_id"])[0])
    assert state["exit_code"] == 128 + signal.SIGTERM


def test_an_ema_run_stopped_and_resumed_ends_where_an_uninterrupted_one_does(small_folder, tmp_path):
    """--ema: last.pt holds the EMA as ``model`` (what was evaluated) and the trained weights as ``train_model``;
    a stopped and resumed --deterministic run ends bit-identical to one that was never stopped."""
    args = flags(small_folder, epochs=2, deterministic="True", ema="0.9", wandb_mode="disabled", keep_checkpoints="all")
    proc = start(*args, "--out_dir", str(tmp_path / "stopped"))
    _, stderr = stop_after(proc, "epoch 1/2")
    assert proc.returncode == 0 and "stopped: SIGTERM" in stderr, stderr[-2000:]
    first = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert first["epoch"] == 1 and set(first["train_model"]) == set(first["model"])
    assert not all(torch.equal(first["model"][k], first["train_model"][k]) for k in first["model"])
    resumed = run_cli("--resume", str(tmp_path / "stopped" / "last.pt"), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = run_cli(*args, "--out_dir", str(tmp_path / "whole"), timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("stopped", "whole"))
    assert a["metrics"]["val/acc"] == b["metrics"]["val/acc"] and a["metrics"]["val/loss"] == b["metrics"]["val/loss"]
    for key in ("model", "train_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    best = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    assert "train_model" not in best and set(best["model"]) == set(b["model"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_start_up_is_clean(sig, small_folder, tmp_path):
    out = tmp_path / "out"
    proc = start(*flags(small_folder), "--out_dir", str(out))
    time.sleep(1.5)  # importing torch, timm, wandb
    proc.send_signal(sig)
    _, stderr = communicate(proc, 120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 0), stderr
    assert stderr.strip().splitlines()[-1].startswith(f"stopped: {signal.Signals(sig).name} during start-up")
    assert "Traceback" not in stderr and not out.exists()


def test_a_stop_during_the_explain_step_finishes_the_wandb_run_and_resume_finishes_the_run(small_folder, tmp_path):
    """A pre-emptible job re-running its command with --resume auto after a stop in the explain step gets the run
    finished (explain outputs, summary.json, the W&B run), not "nothing to resume"; after that, nothing is left."""
    out = tmp_path / "out"
    args = [*flags(small_folder, epochs=1), "--explain_samples=64", "--out_dir", str(out)]
    proc = start(*args, "--cam_method=scorecam")
    _, stderr = stop_after(proc, "epoch 1/1")
    assert proc.returncode == 0, stderr[-2000:]
    assert f"stopped: SIGTERM during the explain step: epoch 1 is saved; finish the run with --resume " \
           f"{out / 'last.pt'}" in stderr
    assert "Traceback" not in stderr and not (out / "summary.json").exists()
    saved = torch.load(out / "last.pt", weights_only=True)
    state = wandb_summary(wandb_parts(saved["state"]["wandb_run_id"])[0])
    assert state["exit_code"] == 128 + signal.SIGTERM

    again = start(*args, "--resume=auto", "--cam_method=gradcam")  # the same command as a scheduler re-runs it
    # (with Grad-CAM: quicker than Score-CAM)
    stdout, stderr = communicate(again)
    assert again.returncode == 0, stderr[-2000:]
    assert f"resuming {out / 'last.pt'}: epoch 1 is saved; its finish (explain step, summary.json, W&B model) was " \
           "cut short: finishing it" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["explain"]["explained"] > 0 and (out / "gradcam.png").is_file()
    parts = wandb_parts(saved["state"]["wandb_run_id"])
    assert len(parts) == 2 and wandb_summary(parts[-1])["exit_code"] == 0
    rows = history(wandb_records(parts[-1]))
    assert [row["epoch"] for row in rows if "train/loss" in row] == [1]  # the epoch once, not trained again
    # the explain row joined epoch 1's row: W&B ignored none of it (issue 37 item 1: it did, three tables lost)
    assert "Tried to log to step" not in stdout + stderr
    (last_row,) = [row for row in rows if row.get("epoch") == 1]
    for key in ("explain/confusion_matrix", "explain/faithfulness_curves", "explain/label_issues"):
        assert any(name.startswith(key) for name in last_row), key
    assert "train/loss" in last_row
    assert offline_check.main([str(out)]) == 0  # the run folder: the W&B run its summary.json names
    last = start(*args, "--resume=auto")
    stdout, _ = communicate(last)
    assert last.returncode == 0 and "nothing to resume" in stdout


def test_a_stop_while_finishing_says_what_was_kept(small_folder, tmp_path):
    out = tmp_path / "out"
    proc = start(*flags(small_folder, epochs=1), "--out_dir", str(out))  # no explain step: the finish follows
    _, stderr = stop_after(proc, "epoch 1/1")
    assert proc.returncode == 0, stderr[-2000:]
    assert f"stopped: SIGTERM while finishing: epoch 1 is saved; summary.json was not written; finish the run with " \
           f"--resume {out / 'last.pt'}" in stderr and "Traceback" not in stderr, stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1 and not (out / ".lock").exists()


def test_a_stop_after_the_run_ended_is_no_start_up_stop_and_no_death(small_folder, tmp_path):
    """After ``done:``, W&B's service still shuts down: a SIGTERM then used to print "during start-up; nothing was
    saved" with a traceback, or kill the process (status 143)."""
    out = tmp_path / "out"
    proc = start(*flags(small_folder, epochs=1), "--out_dir", str(out))
    _, stderr = stop_after(proc, "done:")
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "during start-up" not in stderr, stderr
    assert (out / "summary.json").is_file()


def test_explain_run_stops_cleanly(trained, tmp_path):
    proc = subprocess.Popen([sys.executable, "explain/run.py", "--checkpoint", str(trained["out"] / "best.pt"),
                             "--cam_method=scorecam", "--wandb_mode=offline", f"--out_dir={tmp_path}"], cwd=REPO,
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "scorecam CAMs" not in seen and proc.poll() is None:  # Score-CAM shows its progress; stop it there
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = communicate(proc, 120)
    assert proc.returncode == 130 and "Traceback" not in stderr, (seen + stderr)[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("stopped: SIGINT")


def test_a_disabled_run_resumes_offline_beside_its_checkpoint(small_folder, tmp_path):
    """Resume works whatever the W&B mode of either part, writes beside the checkpoint it continues (not into
    runs/<its name> of the current folder, which holds another run), clears what a killed save left, and continues
    the probe series: the offline part replays the disabled part's epochs, probe images included."""
    here, there = tmp_path / "here", tmp_path / "there"
    there.mkdir()
    proc = start(*flags(small_folder), "--run_name=same", "--wandb_mode=disabled", "--probe_images=4", cwd=there)
    _, stderr = stop_after(proc, "epoch 1/3")
    assert proc.returncode == 0, stderr[-2000:]
    theirs = there / "runs" / "same"
    stopped = torch.load(theirs / "last.pt", weights_only=True)["state"]["probes"]
    assert stopped["epochs"] == [0, 1]
    shutil.copytree(theirs, here / "runs" / "same")  # another run of that name in the folder we resume from
    (theirs / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # what kill -9 during a save leaves
    ours = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (here / "runs" / "same").iterdir()}
    resumed = subprocess.run([sys.executable, str(REPO / "train" / "run.py"), "--resume", str(theirs / "last.pt"),
                              "--wandb_mode=offline"], cwd=here, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {theirs / 'last.pt'}: epoch 1 is saved; continuing at epoch 2 of 3" in resumed.stdout
    assert ours == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (here / "runs" / "same").iterdir()}
    summary = json.loads((theirs / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["wandb_run_id"]
    rows = history(wandb_records(summary["wandb_run_dir"]))
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]  # the disabled part's epochs replayed into the offline run
    assert [row["epoch"] for row in rows if "train/loss" in row] == [1, 2, 3]
    assert not list(theirs.glob(".*.tmp"))
    saved = json.loads((theirs / "probes.json").read_text())
    assert saved["epochs"] == [0, 1, 2, 3]
    for p, probe in enumerate(saved["probes"]):  # the first part's epochs, exactly as they were recorded
        key = f"probes/{probe['index']}_{probe['class']}"
        assert all(row[f"{key}._type"] == "image-file" for row in rows)  # every epoch's image, replayed ones too
        for i, epoch in enumerate(stopped["epochs"]):
            assert probe["epochs"][str(epoch)]["p_true"] == round(float(stopped["p_true"][i][p]), 4)


def test_two_processes_never_share_a_folder(small_folder, tmp_path, capsys):
    from train.run import main

    out = tmp_path / "out"
    first = start(*flags(small_folder, epochs=20), "--out_dir", str(out))
    for line in first.stdout:
        if line.startswith("epoch 1/20"):
            break
    try:  # this test's process is the second one: the first holds the lock
        for args in (["--resume", "auto", "--out_dir", str(out)], [*flags(small_folder), "--out_dir", str(out)]):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert err.strip().splitlines()[-1] == f"error: --out_dir {str(out)!r} is in use by process {first.pid}"
        # nor does a resume of its checkpoint into another folder: both would write the same W&B run id
        elsewhere = tmp_path / "elsewhere"
        assert main(["--resume", str(out / "last.pt"), "--out_dir", str(elsewhere)]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: --resume {str(out / 'last.pt')!r}: its run is still running (process {first.pid} holds "
            f"{str(out)!r}); stop it first, or wait until it ends")
        assert not elsewhere.exists()
    finally:
        first.send_signal(signal.SIGTERM)
        communicate(first)
    assert first.returncode == 0 and torch.load(out / "last.pt", weights_only=True)["epoch"] >= 1


def test_a_folder_with_only_best_pt_holds_a_run(small_folder, tmp_path, capsys):
    from train.run import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "best.pt").write_bytes(b"the first save was cut short")
    assert main([*flags(small_folder), "--out_dir", str(out)]) == 2
    assert "already holds a run; its first save was cut short (best.pt without last.pt)" in capsys.readouterr().err


def _small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (60 << 20, 60 << 20))  # best.pt (45 MB) fits, last.pt (90 MB) not


def test_a_failed_save_says_what_is_saved_and_wandb_shows_no_unsaved_epoch(small_folder, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "train/run.py", *flags(small_folder, epochs=2), "--out_dir", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=_small_files)
    assert result.returncode == 2, result.stderr[-2000:]
    line = [x for x in result.stderr.splitlines() if x.startswith("error: ")][-1]
    assert line == (f"error: epoch 1: saving its checkpoint in {out} failed (File too large); no epoch had finished; "
                    "make room and start it again")
    assert not (out / "last.pt").exists() and read_metrics(out / "metrics.jsonl") == []
    assert not (out / "best.pt").exists() and not list(out.glob(".*.tmp"))  # the epoch's files: all or none
    run_dir = next(p for p in (Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*")
                   if wandb_summary(p)["config"].get("out_dir") == str(out))
    assert not [row for row in history(wandb_records(run_dir)) if "train/loss" in row]


def test_a_failed_write_in_the_explain_step_says_what_is_saved(small_folder, tmp_path):
    """A write of the explain step that fails (a full disk; here a folder squatting on the picture's name) is one
    error line saying the checkpoints are whole and how to explain later; no traceback."""
    out = tmp_path / "out"
    (out / "misclassified.png").mkdir(parents=True)
    result = call_cli(*flags(small_folder, epochs=1, explain_samples="4", trust="False", wandb_mode="disabled"),
                      "--out_dir", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the explain step could not write in {out} (Is a directory); epoch 1 is saved and best.pt is the "
        f"model, summary.json was not written; explain it later with python explain/run.py --checkpoint "
        f"{out / 'best.pt'}")
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1 and not (out / "summary.json").exists()


def test_failed_starts_leave_no_folder_behind(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "train" / "run.py"), "--data_dir", str(tmp_path / "none")],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "has no train/ and test/ folders" in result.stderr
    assert list(cwd.iterdir()) == []  # no runs/<timestamp>/


def test_a_stop_that_lands_while_the_stop_block_exits_is_not_raised(monkeypatch):
    """The race CI hit once: a SIGTERM after ``done:`` arrived while ``stops_raise`` was putting the old handlers back,
    and its ``Stopped`` escaped ``main`` as a traceback (exit 1). Here the signal is sent at exactly that moment."""
    from train.stops import Stopped, stops_raise

    real_signal, before, sent = signal.signal, signal.getsignal(signal.SIGTERM), []
    exiting = False

    def put_back(sig, handler):  # the first handler put back after the block: a SIGTERM lands just before it
        if exiting and not sent:
            sent.append(sig)
            signal.raise_signal(signal.SIGTERM)
        return real_signal(sig, handler)

    monkeypatch.setattr(signal, "signal", put_back)
    with stops_raise():
        if signal.getsignal(signal.SIGTERM) is before:
            pytest.skip("signal handlers are set only in the main thread")
        exiting = True
    assert sent and signal.getsignal(signal.SIGTERM) is before  # the stop landed, nothing escaped, handlers restored
    with pytest.raises(Stopped), stops_raise():  # and inside the block a stop still stops it
        signal.raise_signal(signal.SIGTERM)


def test_resume_refuses_data_that_changed_under_the_run(small_folder, tmp_path, capsys):
    """Swapping two class folders keeps the class list but exchanges the labels: resume must refuse it (and images
    added or edited), name what changed, touch nothing; the same data moved to another path still resumes."""
    from train.run import main

    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(small_folder, data, ignore=shutil.ignore_patterns(".cache"))
    proc = start(*flags(data, epochs=5, wandb_mode="disabled"), "--out_dir", str(out))
    _, stderr = stop_after(proc, "epoch 1/5")  # a loaded machine may finish another epoch before the stop lands
    assert proc.returncode == 0 and torch.load(out / "last.pt", weights_only=True)["epoch"] < 5, stderr[-2000:]
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def resume_fails(expected: str) -> None:
        assert main(["--resume", str(out / "last.pt")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (f"error: checkpoint {str(out / 'last.pt')!r} cannot be resumed: the data changed since it "
                           f"was saved ({expected}); resume on the data it was trained on, or start a new run"), err
        assert kept == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def swap(a: str, b: str) -> None:
        for split in ("train", "test"):
            (data / split / a).rename(data / split / "tmp")
            (data / split / b).rename(data / split / a)
            (data / split / "tmp").rename(data / split / b)

    swap("cat", "dog")
    resume_fails("'cat' now holds the images 'dog' had; 'dog' now holds the images 'cat' had")
    swap("cat", "dog")
    extra = data / "train" / "dog" / "extra.jpg"
    shutil.copy(next((data / "train" / "cat").iterdir()), extra)
    n = len(list((data / "train" / "dog").iterdir()))
    resume_fails(f"'dog': images train {n - 1} -> {n}")
    extra.unlink()
    edited = sorted((data / "test" / "ship").iterdir())[0]
    original = edited.read_bytes()
    from PIL import Image

    with Image.open(edited) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(edited, quality=95)
    resume_fails("'ship': images edited (same counts)")
    edited.write_bytes(original)
    first = sorted((data / "train" / "frog").iterdir())
    renamed = [path.with_name(f"r{path.name}") for path in first]
    for path, new in zip(first, renamed, strict=True):
        path.rename(new)
    resume_fails("'frog': images renamed (same pixels, other file names)")
    for path, new in zip(first, renamed, strict=True):
        new.rename(path)
    data.rename(tmp_path / "moved")  # the same images under another path (issue 37 item 3)
    assert main(["--resume", str(out / "last.pt")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "(the checkpoint's --data_dir); if the images moved, resume with --data_dir where they are now: the "
        "checkpoint checks they are the same images")
    assert not data.exists()  # no download into the stale path
    assert main(["--resume", str(out / "last.pt"), "--data_dir", str(tmp_path / "moved")]) == 0, \
        capsys.readouterr().err[-2000:]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 5


def test_runs_started_at_the_same_moment_on_one_folder_name_the_one_that_holds_it(tmp_path):
    """Two starts racing on a new --out_dir: one holds it, the other is told which process does — never "is not
    writable (File exists)" from losing the race to create the folder, nor "process unknown" from reading the lock
    before the holder wrote its pid. Threads stand in for processes (a lock file opened twice conflicts the same
    way); a short switch interval makes them interleave inside open()."""
    import threading

    from train.state import OutDir, RunError

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[str] = []
    try:
        for i in range(150):
            path, barrier, held = tmp_path / f"r{i}" / "runs" / "x", threading.Barrier(2), []

            def start_run(path=path, barrier=barrier, held=held) -> None:
                barrier.wait()
                try:
                    held.append(OutDir(path, "uid", resuming=False).open())
                except RunError as exc:
                    errors.append(str(exc))

            threads = [threading.Thread(target=start_run) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(held) == 1, errors[-1:]
            held[0].close()
    finally:
        sys.setswitchinterval(interval)
    assert len(errors) == 150
    assert all(e.startswith("--out_dir ") and e.endswith(f"is in use by process {os.getpid()}") for e in errors), \
        sorted(set(errors))[:3]


def test_resume_auto_without_a_name_never_picks_another_finished_run(trained, small_folder, tmp_path):
    """``--resume auto`` with neither --out_dir nor --run_name looks under runs/: a finished run there is another
    run's record, and the job starts a new run instead of answering "nothing to resume" (issue 37 item 10)."""
    (tmp_path / "runs" / "old").mkdir(parents=True)
    shutil.copy(trained["out"] / "last.pt", tmp_path / "runs" / "old" / "last.pt")  # a finished run's record
    proc = start("--resume", "auto", *flags(small_folder, epochs=1, wandb_mode="disabled"), cwd=tmp_path)
    stdout, stderr = communicate(proc, timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    assert stdout.splitlines()[0] == "--resume auto: no last.pt found, new run" and "nothing to resume" not in stdout
    assert len(list((tmp_path / "runs").glob("*/summary.json"))) == 1  # the new run's; the old record is untouched
