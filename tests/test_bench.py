"""The benchmarks run end to end on a few real images (speed and time-to-accuracy without wandb or torchcam).

Their figures belong in BENCHMARKS.md (measured side by side, or on the GPU); here only their shape and logic.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def stock_image(tmp_path) -> dict[str, str]:
    """An environment where ``import wandb`` and ``import torchcam`` fail, as on the GPU machine's stock image
    (timm imports wandb itself when it can, so checking ``sys.modules`` would blame timm)."""
    blocker = tmp_path / "stock"
    blocker.mkdir()
    for name in ("wandb", "torchcam"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is not on the stock image')\n")
    return {"PYTHONPATH": str(blocker)}


def test_time_to_acc_stops_at_the_target_per_seed_and_writes_the_curve(cifar_subset, tmp_path):
    out = tmp_path / "t.json"
    recipe = ["--data_dir", str(cifar_subset), "--train_subset=100", "--test_subset=50", "--batch_size=50",
              "--lr=0.05", "--device=cpu"]
    done = run_cli(*recipe, "--epochs=3", "--target=0", "--seeds=0,1", f"--json={out}", script="bench/time_to_acc.py",
                   timeout=600, env=stock_image(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]  # runs without wandb and torchcam
    result = json.loads(out.read_text())
    assert result["reached"] == "2/2" and [run["seed"] for run in result["runs"]] == [0, 1]
    for run in result["runs"]:  # target 0 is met by the first evaluation: each seed stops after one epoch
        assert run["reached_epoch"] == 1 and len(run["curve"]) == 1 and run["compile_seconds"] == 0
        assert run["train_seconds"] == run["curve"][0]["train_seconds"] > 0
        assert 0 <= run["final_acc"] <= 1 and run["wall_seconds"] >= run["train_seconds"] + run["eval_seconds"]
    assert result["runs"][0]["curve"] != result["runs"][1]["curve"]  # the seeds really differ
    assert result["seconds_to_target"]["mean"] > 0
    assert result["config"]["epochs"] == 3 and result["config"]["lr"] == 0.05 and result["test_images"] == 50
    assert "2/2 seeds reached 0.0000" in done.stdout and f"wrote {out}" in done.stdout

    never = run_cli(*recipe, "--epochs=2", "--target=1", f"--json={out}",
                    script="bench/time_to_acc.py", timeout=600)
    assert never.returncode == 0, never.stderr[-3000:]
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert result["reached"] == "0/1" and run["reached_epoch"] is None and result["seconds_to_target"] is None
    assert [point["epoch"] for point in run["curve"]] == [1, 2]
    assert run["curve"][1]["train_seconds"] > run["curve"][0]["train_seconds"]
    assert "seed 0: did not reach 1.0000" in never.stdout


@pytest.mark.parametrize("args, message", [
    (["--target=94"], "error: --target 94.0 is not a fraction in [0, 1]"),
    (["--seeds=0,x"], "error: --seeds '0,x' is not a comma-separated list of integers"),
    (["--epochs=zero"], "error: --epochs"),
])
def test_time_to_acc_bad_flags(args, message, tmp_path):
    done = run_cli(*args, f"--json={tmp_path / 't.json'}", script="bench/time_to_acc.py", timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith(message) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "t.json").exists()


def test_wandb_overhead_runs_both_modes_interleaved(cifar_subset, tmp_path):
    out = tmp_path / "w.json"
    run = ["--data_dir", str(cifar_subset), "--train_subset=100", "--test_subset=50", "--epochs=1", "--batch_size=50",
           "--explain_samples=0", "--probe_images=0", "--device=cpu"]
    done = run_cli("--repeats=1", f"--json={out}", "--", *run, script="bench/wandb_overhead.py", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["mode"] for r in result["runs"]] == ["offline", "disabled"]
    for r in result["runs"]:  # offline really tracked (its run folder exists), disabled did not
        assert (r["wandb_run_dir"] is not None) == (r["mode"] == "offline") and r["wall_seconds"] > r["loop_seconds"]
    assert result["run_args"] == run and "offline W&B vs disabled (medians of 1)" in done.stdout

    bad = run_cli("--repeats=1", f"--json={out}", "--", "--lr=fast", script="bench/wandb_overhead.py", timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: train/run.py failed in offline mode (exit 2)")
    assert "--lr" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_headline_runs_each_step_in_order_keeps_what_finished_and_skips_what_it_cannot(cifar_subset, tmp_path):
    out = tmp_path / "h.json"
    done = run_cli("--data_dir", str(cifar_subset), "--seeds=0", "--target=0", "--speed_images=100",
                   "--speed_epochs=1", "--no_compile", "--workers=0", f"--json={out}", "--",
                   "--train_subset", "100", "--test_subset=50", "--epochs=2", "--batch_size=50", "--device=cpu",
                   script="bench/headline.py", timeout=900, env=stock_image(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    default = result["steps"]["default"]
    run = default["runs"][0]  # --full: trains both epochs though the target (0) was met after the first
    assert run["epochs_run"] == 2 and run["reached_epoch"] == 1 and default["reached"] == "1/1"
    assert run["seconds_to_target"] == run["curve"][0]["train_seconds"] < run["train_seconds"]
    assert default["val_acc"]["mean"] == run["final_acc"] == run["curve"][-1]["val_acc"]
    assert default["val_acc_no_tta"]["mean"] == run["curve"][-1]["val_acc_no_tta"]
    assert default["config"]["train_subset"] == 100 and default["train_images"] == 100 and default["test_images"] == 50
    speed = result["steps"]["speed"]  # bench/speed.py: the recipe's batch size and device reach it
    assert speed["batch_size"] == 50 and speed["ours_compiled"] is None and speed["baseline"]["workers"] == 0
    ours, baseline = speed["ours"]["images_per_second"], speed["baseline"]["images_per_second"]
    assert ours > 0 and baseline > 0 and speed["ratio"] == pytest.approx(ours / baseline)
    assert speed["images"] == 100 and speed["mfu"] is None  # no known peak for a CPU
    assert 3.0e9 < speed["train_flops_per_image"] < 3.7e9  # ResNet-18 at 32x32: ~0.56 GFLOP forward, x3 + BN
    assert f"ratio {speed['ratio']:.2f}x" in done.stdout  # speed.py's own line, passed through
    assert result["skipped"] == {"cam": "torchcam is not installed", "wandb": "wandb is not installed"}
    table = result["markdown"]  # printed too, one row per measure, the skipped steps said so
    assert table in done.stdout and "| default recipe, final `val/acc` (flip TTA), seeds 0 |" in table
    assert f"{run['final_acc'] * 100:.2f} %" in table and f"{speed['ours']['images_per_second']:.0f} img/s" in table
    assert "| cam | not measured: torchcam is not installed |" in table
    assert json.loads((tmp_path / "h-steps" / "default-seed0.json").read_text())["runs"][0] == run

    late = run_cli("--data_dir", str(cifar_subset), "--budget_s=0", f"--json={out}", script="bench/headline.py",
                   timeout=120)  # no time left: every step says why it was skipped, the file still written
    assert late.returncode == 0, late.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["steps"] == {} and set(result["skipped"]) == {"default seed 0", "speed", "cam", "wandb"}
    assert all(why.startswith("out of time") for why in result["skipped"].values())


@pytest.mark.parametrize("args, message", [
    (["--steps=default,fast"], "error: --steps: unknown step(s) fast"),
    (["--seeds=0,x"], "error: --seeds '0,x' is not a comma-separated list of integers"),
    (["--", "--epoch=2"], "error: unknown flag --epoch (did you mean --epochs?)"),  # train/run.py's own parser
])
def test_headline_bad_flags(args, message, cifar_subset, tmp_path):
    done = run_cli("--data_dir", str(cifar_subset), f"--json={tmp_path / 'h.json'}", *args,
                   script="bench/headline.py", timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith(message) and "Traceback" not in done.stderr
    assert not (tmp_path / "h.json").exists()
