"""The benchmarks run end to end on a few real images (speed and time-to-accuracy without wandb or torchcam).

Their figures belong in BENCHMARKS.md (measured side by side, or on the GPU); here only their shape and logic.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli, wandb_summary
from train.tracking import Tracker

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


DATA = REPO.parent / "shared" / "data"
ARCHIVES = [DATA / "cifar10-jpeg.tar.xz", DATA / "cifar10-png-lossless-subset.tar.xz"]
needs_archives = pytest.mark.skipif(not all(a.is_file() for a in ARCHIVES),
                                    reason=f"the two CIFAR-10 archives are not in {DATA} (../shared/data)")
HEADLINE_KEYS = {"device", "date", "torch", "default", "airbench94", "jpeg_cost", "throughput", "wandb_fixed_seconds",
                 "wall_seconds"}


def device_image(tmp_path) -> dict[str, str]:
    """An environment that imports only what the GPU machine will have: the image's packages
    (bench/device/image_packages.txt), the carried wheels (bench/device/requirements.txt, airbench), the standard
    library and the repo's own packages; any other installed distribution fails to import, as it would there."""
    folder = tmp_path / "device-image"
    folder.mkdir()
    allowed = set()
    for name in ("image_packages.txt", "requirements.txt"):
        for line in (REPO / "bench" / "device" / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                allowed.add(re.split("[=<>]", line.strip())[0].lower().replace("_", "-"))
    (folder / "sitecustomize.py").write_text(f"""
import importlib.metadata, sys

ALLOWED = {sorted(allowed | {"airbench", "cifar-insight"})!r}
OWNERS = importlib.metadata.packages_distributions()


class DeviceImage:
    def find_spec(self, name, path=None, target=None):
        owners = {{o.lower().replace("_", "-") for o in OWNERS.get(name, [])}}
        if path is None and owners and not owners & set(ALLOWED):
            raise ModuleNotFoundError(f"{{name}} is not on the device image", name=name)
        return None


sys.meta_path.insert(0, DeviceImage())
""")
    return {"PYTHONPATH": str(folder)}


def test_device_image_blocks_what_the_gpu_machine_lacks(tmp_path):
    """The simulated image refuses a package of this machine the GPU image lacks (W&B's sweeps engine is neither in
    it), and lets the image's and the carried packages through."""
    code = ("import importlib\nfor name in ('torch', 'wandb', 'cleanlab', 'simple_parsing', 'torchcam', 'sweeps'):\n"
            "    try:\n        importlib.import_module(name); print(name, 'ok')\n"
            "    except ImportError:\n        print(name, 'blocked')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=os.environ | device_image(tmp_path), cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["torch", "ok", "wandb", "ok", "cleanlab", "ok", "simple_parsing", "ok",
                                   "torchcam", "ok", "sweeps", "blocked"]


@needs_archives
def test_cifar_sets_twins_and_airbench_format(tmp_path):
    from bench.cifar_sets import jpeg_twins, to_airbench, unpack
    from train.data import DataError, load_data

    png = unpack(ARCHIVES[1], tmp_path, {"train": 3, "test": 2})
    originals = {p.relative_to(png).with_suffix("").as_posix() for p in png.glob("*/*/*.png")}
    jpeg = unpack(ARCHIVES[0], tmp_path, {"train": 1, "test": 1}, also=originals)
    assert len(originals) == 10 * (3 + 2) and (png / "labels_all.npz").is_file()  # the first N per class, the rest kept
    twins = jpeg_twins(png, jpeg, tmp_path / "twins")
    files = sorted(p.relative_to(twins).as_posix() for p in twins.glob("*/*/*.jpg"))
    assert files == sorted(f"{stem}.jpg" for stem in originals)  # same images, same paths, .jpg
    assert all((twins / f).read_bytes() == (jpeg / f).read_bytes() for f in files)
    ours = load_data(jpeg, download=False)
    to_airbench(jpeg, tmp_path / "airbench")
    for split, dataset in zip(("train", "test"), ours, strict=True):
        blob = torch.load(tmp_path / "airbench" / "cifar10" / f"{split}.pt", weights_only=True)  # as airbench loads
        assert blob["images"].dtype == torch.uint8 and blob["images"].shape == (len(dataset), 32, 32, 3)
        assert torch.equal(blob["images"], dataset.images.permute(0, 2, 3, 1))  # airbench sees our pixels
        assert blob["labels"].dtype == torch.int64 and torch.equal(blob["labels"], dataset.labels)
        assert blob["classes"] == dataset.classes == sorted(dataset.classes)
    (jpeg / "test" / "cat" / "0000.jpg").unlink()  # an original without its twin
    with pytest.raises(DataError, match="has no JPEG twin"):
        jpeg_twins(png, jpeg, tmp_path / "twins-2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_airbench94_refuses_without_its_files_or_cuda(tmp_path, cifar_subset):
    from bench.cifar_sets import to_airbench

    done = run_cli("--data", str(tmp_path), f"--json={tmp_path / 'a.json'}", script="bench/airbench94.py", timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: --data {str(tmp_path)!r} has no cifar10/train.pt or cifar10/test.pt "
        f"(python bench/cifar_sets.py makes them)")
    to_airbench(cifar_subset, tmp_path)
    done = run_cli("--data", str(tmp_path), f"--json={tmp_path / 'a.json'}", script="bench/airbench94.py", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: airbench.train94 needs CUDA, and this machine has none"
    assert not (tmp_path / "a.json").exists()


@needs_archives
def test_headline_runs_every_step_in_a_device_image_and_writes_the_issue_keys(tmp_path):
    out, real = tmp_path / "h.json", tmp_path / "real-run"
    done = run_cli("--archives", str(DATA), "--work", str(tmp_path / "work"), "--per_class=10,5", "--seeds=0",
                   "--variants=--not_a_flag=1;--label_smoothing=0.2", "--reserve_s=0", "--speed_images=100",
                   "--speed_batch_sizes=50", "--compile_modes=", f"--real_run_out={real}", f"--json={out}", "--",
                   "--epochs=1", "--batch_size=50", "--device=cpu", "--trust_images=8",
                   script="bench/headline.py", timeout=1500, env=device_image(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert HEADLINE_KEYS <= set(result) and result["device"] == "cpu" and result["torch"] == torch.__version__
    assert set(result["jpeg_cost"]) == {"png_png", "png_jpeg", "jpeg_png", "jpeg_jpeg"}
    assert all(len(v) == 1 and 0 <= v[0] <= 1 for v in result["jpeg_cost"].values())  # one seed, accuracies
    jpeg_cost = result["steps"]["jpeg_cost"]  # trained on 100 originals / 100 twins, tested on 50 of each
    assert jpeg_cost["train_images"] == 100 and jpeg_cost["test_images"] == 50
    assert result["airbench94"] == {"acc": [], "seconds": []}
    assert result["skipped"]["airbench94"] == "exit 2: error: airbench.train94 needs CUDA, and this machine has none"
    default = result["default"]
    assert len(default["acc"]) == len(default["acc_no_tta"]) == len(default["train_seconds"]) == 1
    assert default["acc"][0] == result["steps"]["default"]["runs"][0]["final_acc"]
    unknown, smoothing = result["recipe"]["variants"]
    assert unknown["flags"] == ["--not_a_flag=1"] and unknown["status"].startswith("skipped: unknown flag")
    assert smoothing["status"] == "ran" and smoothing["config"]["label_smoothing"] == 0.2
    assert smoothing["diff_to_default"] == pytest.approx(smoothing["acc"][0] - default["acc"][0])
    wall, wandb = result["wall_seconds"], result["wandb_fixed_seconds"]
    assert {"startup_imports", "data_decoding_first_run", "data_decoding_cached", "epochs", "explain",
            "wandb_finish", "total"} <= set(wall)
    assert sum(v for k, v in wall.items() if k not in ("total", "data_decoding_first_run")) == \
        pytest.approx(wall["total"])  # the phases of the real run add up to its wall time
    assert wandb["init"] > 0 and wandb["epoch_rows"] > 0 and wandb["model_artifact"] > 0
    assert wandb["total"] == pytest.approx(sum(v for k, v in wandb.items() if k not in ("total", "exit_hooks")))
    copied = sorted(p.name for p in real.iterdir())  # the real run's small outputs, no checkpoint, no W&B folder
    assert {"summary.json", "metrics.jsonl", "probes.json", "misclassified.png", "confusion_matrix.png",
            "probes.png"} <= set(copied) and all(Path(name).suffix in (".json", ".jsonl", ".png") for name in copied)
    summary = json.loads((real / "summary.json").read_text())
    assert wandb_summary(summary["wandb_run_dir"])["summary"]["best_epoch"] == 1  # a real offline W&B run
    assert set(result["throughput"]) == {"eager_bs50"} and result["throughput"]["eager_bs50"] > 0
    table = result["markdown"]
    assert table in done.stdout and "| airbench94 | exit 2: error: airbench.train94 needs CUDA" in table
    assert f"| `--label_smoothing=0.2` | {smoothing['acc'][0] * 100:.2f} %" in table

    late = run_cli("--archives", str(DATA), "--work", str(tmp_path / "work"), "--budget_s=0", f"--json={out}",
                   script="bench/headline.py", timeout=120)  # no time left: every step says why it was skipped
    assert late.returncode == 0, late.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["steps"] == {} and HEADLINE_KEYS <= set(result)
    assert set(result["skipped"]) == {"data", *("jpeg_cost", "airbench94", "default", "recipe", "real_run", "speed")}
    assert all("out of time" in why for why in result["skipped"].values())


@pytest.mark.parametrize("args, message", [
    (["--steps=default,fast"], "error: --steps: unknown step(s) fast"),
    (["--seeds=0,x"], "error: --seeds '0,x' is not a comma-separated list of integers"),
    (["--parallel=0"], "error: --parallel 0 must be at least 1"),
    (["--", "--epoch=2"], "error: unknown flag --epoch (did you mean --epochs?)"),  # train/run.py's own parser
])
def test_headline_bad_flags(args, message, tmp_path):
    done = run_cli(f"--json={tmp_path / 'h.json'}", *args, script="bench/headline.py", timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith(message) and "Traceback" not in done.stderr
    assert not (tmp_path / "h.json").exists()


def test_speed_refuses_an_unknown_compile_mode(tmp_path):
    done = run_cli("--compile_modes=default,fast", f"--json={tmp_path / 's.json'}", script="bench/speed.py",
                   timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: --compile_modes: unknown mode(s) fast"


def test_label_issue_cost_times_the_feature_inside_paired_steps(cifar_subset, tmp_path):
    out = tmp_path / "l.json"
    done = run_cli("--data_dir", str(cifar_subset), "--test_subset=40", "--explain_samples=4", "--repeats=2",
                   "--device=cpu", f"--json={out}", script="bench/label_issue_cost.py", timeout=900,
                   env={"WANDB_DIR": str(tmp_path / "wandb")})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["images"] == 40 and result["repeats"] == len(result["pairs"]) == 2
    for pair in result["pairs"]:  # the label code ran (and was timed) only in the steps that had it on
        assert pair["off"]["labels"] == 0 and pair["off"]["flagged"] == 0
        assert 0 < pair["on"]["labels"] < pair["on"]["seconds"] and pair["on"]["flagged"] > 0
        assert pair["inside_fraction"] == pytest.approx(pair["inside_seconds"] /
                                                        (pair["on"]["seconds"] - pair["inside_seconds"]))
    fractions = [p["inside_fraction"] for p in result["pairs"]]
    assert result["cost_fraction"]["max"] == max(fractions) and result["cost_fraction"]["min"] == min(fractions)
    assert result["verdict"] == ("within 5%" if max(fractions) < 0.05 else "over 5%" if min(fractions) > 0.05
                                 else "inconclusive")
    assert f"{100 * result['cost_fraction']['median']:.2f}% of the explain step" in done.stdout
    assert result["label_issues_found"] > 0 and result["cleanlab_seconds"] > 0


def test_label_issue_cost_verdict_needs_every_pair_on_one_side():
    from bench.label_issue_cost import verdict

    assert verdict([0.01, 0.049]) == "within 5%"
    assert verdict([0.051, 0.3]) == "over 5%"
    assert verdict([0.03, 0.07]) == "inconclusive"  # the pairs disagree: noise decides, so no verdict
    assert verdict([0.03, 0.07], bound=0.1) == "within 10%"


@pytest.mark.parametrize(("args", "message"), [
    (["--repeats=0"], "error: --repeats must be >= 1"),
    (["--tta=maybe"], "error: --tta expects bool, got 'maybe'"),
    (["--data_dir=/nonexistent"], "error: --data_dir '/nonexistent' has no train/ and test/ folders"),
])
def test_label_issue_cost_bad_flags(args, message, tmp_path, capsys):
    from bench.label_issue_cost import main

    assert main([*args, f"--json={tmp_path / 'l.json'}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().startswith(message) and len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "l.json").exists()


def test_label_issue_cost_times_only_inside_its_context():
    import explain.report
    from bench.label_issue_cost import SPENT, timing
    from explain.labels import find_label_issues

    before = (explain.report.find_label_issues, Tracker.log)
    SPENT.update(labels=0.0, wandb=0.0)
    with timing():
        issues = explain.report.find_label_issues(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]),
                                                  torch.tensor([0, 1, 1]))
        assert SPENT["labels"] > 0 and SPENT["wandb"] == 0  # timed, and still did its work
        assert issues.checked == 3 and explain.report.find_label_issues.__wrapped__ is find_label_issues
    assert (explain.report.find_label_issues, Tracker.log) == before  # restored on the way out
