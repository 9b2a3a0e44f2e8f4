"""Offline runs that survive the trip: W&B stages every artifact file inside the run's own wandb/ folder (training,
explain, sweep trials), and ``python -m train.offline_check`` reports what a sync needs, what is missing and where."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import REPO, user_env, wandb_records
from train import offline_check

pytestmark = pytest.mark.slow


def staged_paths(run_dir: Path) -> list[Path]:
    """Every file the run's artifact manifests name (absolute ``local_path``), read with W&B's reader."""
    return [Path(entry["local_path"]) for record in wandb_records(run_dir) if record["type"] == "artifact"
            for entry in record["artifact"]["manifest"]["contents"]]


def check(*paths: Path) -> subprocess.CompletedProcess:
    """``python -m train.offline_check PATHS`` as a command."""
    return subprocess.run([sys.executable, "-m", "train.offline_check", *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def check_here(capsys, *paths: Path) -> SimpleNamespace:
    """The same check in this process (no second start-up of torch), its output captured."""
    code = offline_check.main([str(path) for path in paths])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def test_a_training_run_stages_everything_in_its_wandb_folder(trained, capsys):
    wandb_dir, home = trained["wandb_dir"], trained["home"]
    files = staged_paths(trained["run_dir"])
    assert len(files) > 10 and any(path.stat().st_size > 40e6 for path in files)  # table images ... and best.pt
    assert all(path.is_relative_to(wandb_dir / "artifacts" / "staging") and path.is_file() for path in files)
    assert trained["summary"]["wandb_staging_dir"] == str(wandb_dir / "artifacts" / "staging")
    assert not list((home / ".local" / "share").rglob("*.pt"))  # nothing staged in the home folder
    before = check(wandb_dir)
    assert before.returncode == 0, before.stdout + before.stderr
    assert f"{trained['run_dir']} (run {trained['summary']['wandb_run_id']}, finished): complete" in before.stdout
    assert "1 model" in before.stdout and "3 history rows" in before.stdout
    shutil.rmtree(home / ".local" / "share" / "wandb", ignore_errors=True)  # a container losing its home
    after = check_here(capsys, wandb_dir)
    assert after.stdout == before.stdout and after.returncode == 0


def test_missing_and_moved_files_are_reported_for_an_explain_run(trained, tmp_path, capsys):
    home, root = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    root.mkdir()
    env = user_env(home) | {"WANDB_DIR": str(root)}
    done = subprocess.run([sys.executable, "explain/run.py", "--checkpoint", str(trained["out"] / "best.pt"),
                           "--explain_samples=4", f"--out_dir={tmp_path / 'pictures'}", "--wandb_mode=offline"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = next((root / "wandb").glob("offline-run-*"))
    files = staged_paths(run_dir)
    assert files and all(path.is_relative_to(root / "wandb" / "artifacts") for path in files)
    assert check_here(capsys, root).returncode == 0  # a WANDB_DIR is accepted as well as its wandb/ folder

    moved = tmp_path / "elsewhere"
    shutil.move(root / "wandb", moved)  # the folder travels; W&B's records still name the old paths
    result = check_here(capsys, moved)
    assert result.returncode == 2 and result.stderr.startswith("error: 1 of 1 offline runs cannot be synced")
    first = files[0]
    relocated = moved / first.relative_to(root / "wandb")
    assert f"expected at {first} (now at {relocated}: the wandb/ folder moved)" in result.stdout
    assert f"ln -s {moved} {root / 'wandb'}" in result.stdout
    (root / "wandb").symlink_to(moved)  # ... and the way out the report gives works
    assert check_here(capsys, moved).returncode == 0

    for path in (moved / "artifacts" / "staging").iterdir():  # staged files lost: the check names each one
        path.unlink()
    lost = check_here(capsys, moved)
    assert lost.returncode == 2 and lost.stdout.count("  missing: artifact ") == min(len(files), 20)


def test_a_sweep_trial_stages_in_its_wandb_folder(cifar_subset, tmp_path, capsys):
    home, root = tmp_path / "home", tmp_path / "root"
    home.mkdir()
    root.mkdir()
    spec = {"name": "one", "program": "train/run.py", "method": "grid", "metric": {"name": "val/acc"},
            "parameters": {"lr": {"values": [0.05]}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "sweeps/local.py", str(tmp_path / "spec.yaml"), f"--out_dir={tmp_path}/s",
                           f"--data_dir={cifar_subset}", "--train_subset=20", "--test_subset=20", "--epochs=1",
                           "--batch_size=20", "--explain_samples=2", "--probe_images=0"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=user_env(home) | {"WANDB_DIR": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    trial = json.loads((tmp_path / "s" / "leaderboard.json").read_text())[0]
    files = staged_paths(Path(trial["wandb_run_dir"]))
    assert files and all(path.is_relative_to(root / "wandb" / "artifacts") for path in files)
    assert check_here(capsys, root / "wandb").returncode == 0


def test_bad_paths_are_one_error_line(tmp_path, capsys):
    for args, message in ((["--force"], "error: unknown flag --force"),
                          ([str(tmp_path / "nowhere")], "does not exist"),
                          ([str(tmp_path)], "holds no offline W&B run")):
        assert offline_check.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    result = check(tmp_path / "nowhere")  # and as a command
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
