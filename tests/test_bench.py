"""The benchmarks run end to end on a few real images (speed and time-to-accuracy without wandb or torchcam), refuse
bad flags before any work, and never replace a results file with less (bench/common.py).

Their figures belong in BENCHMARKS.md (measured side by side, or on the GPU); here only their shape and logic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import REPO, built_once, call_cli, run_cli, wandb_summary
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


def call_main(script: str, argv: list[str]) -> tuple[int, str, str]:
    """``bench/<script>``'s ``main(argv)`` called in this process (:func:`tests.conftest.call_cli`): its exit status,
    stdout and stderr. The flag checks run before any measurement, so calling them here tests the same code a
    subprocess would without paying ~4 s of imports each; ``test_a_bench_command_line_refuses_a_bad_flag_in_one_line``
    proves the command-line path itself."""
    done = call_cli(*argv, script=f"bench/{Path(script).name}")
    return done.returncode, done.stdout, done.stderr


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
    (["--target=94"], "error: --target must be a number >= 0 and <= 1, got '94'"),
    (["--seeds=0,x"], "error: --seeds must be a comma-separated list of integers >= 0, got '0,x'"),
    (["--epochs=zero"], "error: --epochs"),
    (["--seed=3"], "error: --seed is not used here: give --seeds (one run per seed)"),  # not an abbreviated --seeds
])
def test_time_to_acc_bad_flags(args, message, tmp_path):
    code, _, stderr = call_main("time_to_acc.py", [*args, f"--json={tmp_path / 't.json'}"])
    assert code == 2 and stderr.strip().startswith(message) and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "t.json").exists()


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

    before = out.read_bytes()
    bad = call_cli("--repeats=1", f"--json={out}", "--", "--lr=fast", script="bench/wandb_overhead.py")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --lr expects float, got 'fast'"  # before any run
    assert bad.stdout == "" and out.read_bytes() == before
    (tmp_path / "a-file").write_text("not a data folder")
    failed = call_cli("--repeats=1", f"--json={out}", "--", f"--data_dir={tmp_path / 'a-file'}", "--device=cpu",
                      script="bench/wandb_overhead.py")  # a flag train/run.py refuses only when it runs
    assert failed.returncode == 2
    assert failed.stderr.strip().startswith("error: train/run.py failed in offline mode (exit 2): error: --data_dir")
    assert len(failed.stderr.strip().splitlines()) == 1 and out.read_bytes() == before


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
    assert unpack(ARCHIVES[0], tmp_path) == jpeg and not (jpeg / "test" / "cat" / "0000.jpg").exists()  # reused
    with tarfile.open(tmp_path / "empty.tar.xz", "w:xz"):
        pass
    with pytest.raises(tarfile.TarError, match="empty.tar.xz is empty"):
        unpack(tmp_path / "empty.tar.xz", tmp_path / "e")


def test_airbench94_port_trains_on_the_cpu_and_reports_its_three_tta_levels(tmp_path, cifar_subset):
    """airbench94's method from airbench's own parts, on the CPU (bf16 autocast where native): 2,000 real images
    (the subset twice: airbench's batch is 1,024), its 9.9 epochs, one seed."""
    from bench.cifar_sets import to_airbench

    done = call_cli("--data", str(tmp_path), f"--json={tmp_path / 'a.json'}", script="bench/airbench94.py")
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: --data {str(tmp_path)!r} has no cifar10/train.pt or cifar10/test.pt "
        f"(python bench/cifar_sets.py makes them)")
    to_airbench(cifar_subset, tmp_path)
    train = torch.load(tmp_path / "cifar10" / "train.pt", weights_only=True)
    torch.save({**train, "images": train["images"].repeat(2, 1, 1, 1), "labels": train["labels"].repeat(2)},
               tmp_path / "cifar10" / "train.pt")
    done = run_cli("--data", str(tmp_path), "--device=cpu", "--seeds=0", f"--json={tmp_path / 'a.json'}",
                   script="bench/airbench94.py", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["device"] == "cpu" and result["train_images"] == 2000 and result["test_images"] == 200
    assert result["seeds"] == [0] and result["seconds"][0] > 0
    for key in ("acc", "acc_flip", "acc_single"):  # 10 steps of batch 1,024 learn something on real images
        assert len(result[key]) == 1 and 0.15 < result[key][0] <= 1, (key, result[key])


def test_recipe_cpu_reads_finished_runs_and_writes_each_rows_time_and_command(trained, tmp_path, cifar_subset):
    out = tmp_path / "r.json"
    run = trained["out"]
    real = tmp_path / "real-run"
    code = call_cli(f"--data_dir={cifar_subset}", f"--work={tmp_path / 'w'}", "--steps=default_20,hour",
                    f"--default_run={run}", f"--hour_run={run}", f"--real_run_to={real}", f"--json={out}",
                    "--compare_trust_images=12",  # the real run's 64 made this the suite's slowest test (100 s)
                    script="bench/recipe_cpu.py")
    assert code.returncode == 0, code.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = json.loads((run / "summary.json").read_text())
    for step in ("default_20", "hour"):
        row = result[step]
        assert row["acc"] == summary["test_acc"] and row["acc_single"] == summary["test_acc_no_tta"]
        # the steps alone (as airbench's timer), below the whole epochs with their evaluation
        assert row["seconds"] == summary["train_step_seconds"] < row["seconds_with_evaluation"] == \
            summary["train_seconds"] and "training steps" in row["seconds_cover"]
        assert row["command"].startswith("python train/run.py --data_dir=") and row["run"] == str(run)
        assert row["recipe"] == json.loads((run / "config.json").read_text())
    assert result["device"] == "cpu" and "airbench94" not in result
    copied = set(result["default_20"]["real_run"]["files"])  # docs/real-run/ made from the run, no weights
    assert {"summary.json", "config.json", "metrics.jsonl", "predictions.npz", "label_issues.json", "gradcam.png",
            "cam_methods.json", "cam_methods.png", "explain-summary.json"} <= copied
    assert {p.name for p in real.iterdir()} == {name.split("/")[0] for name in copied}
    assert not list(real.rglob("*.pt")) and not (real / "wandb").exists()
    compared = json.loads((real / "cam_methods.json").read_text())
    assert {row["method"] for row in compared["methods"]} == {"gradcam", "gradcampp", "layercam"}


@needs_archives
def test_headline_runs_every_step_in_a_device_image_and_writes_the_issue_keys(tmp_path):
    out, real = tmp_path / "h.json", tmp_path / "real-run"
    done = run_cli("--archives", str(DATA), "--work", str(tmp_path / "work"), "--per_class=10,5", "--seeds=0",
                   "--variants=--label_smoothing=0.2", "--reserve_s=0", "--speed_images=100",
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
    assert result["skipped"]["airbench94"] == "exit 2: error: --device 'cuda': CUDA is not available on this machine"
    default = result["default"]
    assert len(default["acc"]) == len(default["acc_no_tta"]) == len(default["train_seconds"]) == 1
    assert default["acc"][0] == result["steps"]["default"]["runs"][0]["final_acc"]
    (smoothing,) = result["recipe"]["variants"]
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
            "probes.png", "config.json", "predictions.npz"} <= set(copied)
    assert all(Path(name).suffix in (".json", ".jsonl", ".png", ".npz") for name in copied)
    summary = json.loads((real / "summary.json").read_text())
    assert wandb_summary(summary["wandb_run_dir"])["summary"]["best_epoch"] == 1  # a real offline W&B run
    assert set(result["throughput"]) == {"eager_bs50"} and result["throughput"]["eager_bs50"] > 0
    table = result["markdown"]
    assert table in done.stdout and "| airbench94 | exit 2: error: --device 'cuda': CUDA is not available" in table
    assert f"| `--label_smoothing=0.2` | {smoothing['acc'][0] * 100:.2f} %" in table

    assert "kept_from_earlier" not in result  # a new file: every figure is this run's


def fake_archives(folder: Path) -> Path:
    """A folder with the two archives' names (empty files): enough for the flags to pass, nothing to unpack."""
    folder.mkdir()
    for archive in ARCHIVES:
        (folder / archive.name).touch()
    return folder


EARLIER = {"device": "cpu", "default": {"acc": [0.9], "acc_no_tta": [0.89], "train_seconds": [20.0]},
           "steps": {"default": {"seeds": [0]}}, "throughput": {"eager_bs512": 1000.0},
           "skipped": {"speed": "out of time (3s of the budget left)", "airbench94": "exit 2: no CUDA"}}


@pytest.mark.parametrize("args, message", [
    # issue 28: each of these skipped every step, replaced the results file with an empty skeleton and exited 0
    (["--archives=/no/such/folder"], "error: --archives '/no/such/folder' is not a folder"),
    (["--archives={tmp}"],
     "error: --archives '{tmp}' has no cifar10-jpeg.tar.xz or cifar10-png-lossless-subset.tar.xz"),
    (["--per_class=-5"], "error: --per_class must be TRAIN,TEST: 2 integers >= 1, got '-5'"),
    (["--budget_s=-1"], "error: --budget_s must be a number >= 20, got '-1'"),
    (["--variants=nosuch", "--steps=recipe"],
     "error: --variants 'nosuch': unexpected argument 'nosuch' (flags look like --key=value)"),
    (["--variants=--ema=0.999;--lr=fast"], "error: --variants '--lr=fast': --lr expects float, got 'fast'"),
    (["--variants=;", "--steps=recipe"], "error: --variants names no flag set, and --steps includes recipe"),
    (["--real_run_out={tmp}"], "error: --real_run_out '{tmp}' is not empty (a run never overwrites another)"),
    (["--steps=default,fast"], "error: --steps has unknown 'fast' (choose from jpeg_cost, airbench94, default, "),
    (["--seeds=0,x"], "error: --seeds must be a comma-separated list of integers >= 0, got '0,x'"),
    (["--parallel=0"], "error: --parallel must be an integer >= 1, got '0'"),
    (["--speed_images=10", "--speed_batch_sizes=50"], "error: --speed_images 10 is fewer than a batch of"),
    (["--compile_modes=fast"], "error: --compile_modes has unknown mode(s) fast"),
    (["--budget=100"], "error: unknown flag --budget (did you mean --budget_s?)"),
    (["--", "--epoch=2"], "error: unknown flag --epoch (did you mean --epochs?)"),  # train/run.py's own parser
    (["--", "--seed=2"], "error: --seed is not used here: give --seeds (one run per seed)"),
])
def test_headline_refuses_a_bad_flag_before_any_work(args, message, tmp_path):
    """Every flag is checked first: one `error:` line, exit status 2, no step started, nothing made, and the results
    file already there untouched."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "a-file").touch()
    out, work = tmp_path / "h.json", tmp_path / "work"
    out.write_text(json.dumps(EARLIER))
    before = out.read_bytes()
    args = [arg.replace("{tmp}", str(tmp_path / "tmp")) for arg in args]
    own = [f"--archives={fake_archives(tmp_path / 'archives')}", f"--work={work}", f"--json={out}"]
    code, stdout, stderr = call_main("headline.py", [*own, *args])
    assert code == 2, stdout[-2000:] + stderr[-2000:]
    assert stderr.strip().startswith(message.replace("{tmp}", str(tmp_path / "tmp")))
    assert len(stderr.strip().splitlines()) == 1 and stdout == ""
    assert out.read_bytes() == before and not work.exists() and not (tmp_path / "h-steps").exists()


@pytest.fixture(scope="session")
def headline_work(tmp_path_factory) -> Path:
    """The headline's data sets made once (10 training and 5 test images per class of both archives), shared by the
    headline runs below: their data step finds them made and only checks them."""
    if not all(archive.is_file() for archive in ARCHIVES):
        pytest.skip(f"the two CIFAR-10 archives are not in {DATA} (../shared/data)")
    with built_once(tmp_path_factory, "headline-work") as (root, fresh):
        if fresh:
            done = run_cli("--archives", str(DATA), "--work", str(root), "--per_class=10,5",
                           f"--json={root / 'sets.json'}", script="bench/cifar_sets.py", timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.skipif(torch.cuda.is_available(), reason="airbench94 would run on CUDA")
def test_headline_that_measures_nothing_exits_1_and_leaves_the_results_file(headline_work, tmp_path):
    out = tmp_path / "h.json"
    out.write_text(json.dumps(EARLIER))
    before = out.read_bytes()
    done = run_cli("--archives", str(DATA), "--work", str(headline_work), "--per_class=10,5", "--steps=airbench94",
                   f"--json={out}", script="bench/headline.py", timeout=600)  # headline's airbench94 is CUDA's: skipped
    assert done.returncode == 1, done.stderr[-3000:]
    assert "[headline] airbench94 skipped: exit 2: error: --device 'cuda': CUDA is not available" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: nothing was measured: every step was skipped (see above); {out} is left as it was")
    assert out.read_bytes() == before


def test_headline_merges_the_steps_it_ran_into_the_results_file(headline_work, tmp_path):
    out = tmp_path / "h.json"
    out.write_text(json.dumps(EARLIER))
    done = run_cli("--archives", str(DATA), "--work", str(headline_work), "--per_class=10,5", "--steps=speed",
                   "--speed_images=100", "--speed_batch_sizes=50", "--compile_modes=", f"--json={out}", "--",
                   "--device=cpu", script="bench/headline.py", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert HEADLINE_KEYS <= set(result) and result["device"] == "cpu" and result["torch"] == torch.__version__
    assert result["default"] == EARLIER["default"] and result["steps"]["default"] == EARLIER["steps"]["default"]
    assert result["steps"]["speed"]["throughput"]["eager_bs50"] > 0  # this run's step, beside the earlier one's
    assert result["throughput"] == {"eager_bs512": 1000.0, "eager_bs50": result["steps"]["speed"]["throughput"][
        "eager_bs50"]}
    assert result["skipped"] == {"airbench94": "exit 2: no CUDA"}  # speed ran now: no longer listed as skipped
    assert {"default", "steps.default", "throughput.eager_bs512", "skipped.airbench94"} <= set(
        result["kept_from_earlier"]) and "steps.speed" not in result["kept_from_earlier"]
    assert "| ours, default (flip TTA) | 90.00 % ± 0.00 (n=1) |" in result["markdown"]  # the tables show both runs
    assert "| eager_bs50 |" in result["markdown"] and result["markdown"] in done.stdout


def test_speed_refuses_an_unknown_compile_mode(tmp_path):
    done = call_cli("--compile_modes=default,fast", f"--json={tmp_path / 's.json'}", script="bench/speed.py")
    assert done.returncode == 2 and done.stderr.strip() == "error: --compile_modes has unknown mode(s) fast"


def test_label_issue_cost_times_the_feature_inside_paired_steps(cifar_subset, tmp_path):
    out = tmp_path / "l.json"
    done = call_cli("--data_dir", str(cifar_subset), "--test_subset=40", "--explain_samples=4", "--repeats=1",
                    "--trust_images=4", "--device=cpu", f"--json={out}", script="bench/label_issue_cost.py",
                    env={"WANDB_DIR": str(tmp_path / "wandb")})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["images"] == 40 and result["repeats"] == len(result["pairs"]) == 1
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
    (["--repeats=0"], "error: --repeats must be an integer >= 1, got '0'"),
    (["--tta=maybe"], "error: --tta expects True or False, got 'maybe'"),
    (["--data_dir=/nonexistent"], "error: --data_dir '/nonexistent' is not a folder"),
    (["--data_dir=/"], "error: --data_dir '/' has no train/ and test/ folders"),  # train.data's own check
])
def test_label_issue_cost_bad_flags(args, message, tmp_path, capsys):
    from bench.label_issue_cost import main

    with pytest.raises(SystemExit) as exit:
        main([*args, f"--json={tmp_path / 'l.json'}", "--device=cpu"])
    assert exit.value.code == 2
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


# ---------------------------------------------------------------------------------------------------------------------
# bench/common.py: every script's flags checked before any work, results files never replaced with less

SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name != "common.py")
OUT_FLAG = {"cam_speed.py": "--out"}  # where a script writes its results; --json elsewhere
BAD_FLAG = {  # a bad value of one of each script's own flags, and the start of its one-line refusal
    "airbench94.py": (["--data=/no/such/folder"], "error: --data '/no/such/folder' is not a folder"),
    "cam_speed.py": (["--batch_sizes=256,0"], "error: --batch_sizes must be a comma-separated list of integers >= 1"),
    "cifar_sets.py": (["--archives={tmp}", "--work={tmp}"], "error: --archives '{tmp}' has no cifar10-jpeg.tar.xz"),
    "cpu.py": (["--steps=-1"], "error: --steps must be an integer >= 1, got '-1'"),
    "headline.py": (["--budget_s=-1"], "error: --budget_s must be a number >= 20, got '-1'"),
    "jpeg_cost.py": (["--png_dir={tmp}", "--jpeg_dir={tmp}"], "error: --png_dir '{tmp}' has no train or test"),
    "label_quality.py": (["{tmp}"], "error: run '{tmp}' has no label_issues.json"),
    "label_issue_cost.py": (["--test_subset=-1"], "error: --test_subset must be an integer >= 0, got '-1'"),
    "recipe_cpu.py": (["--steps=hour,day"], "error: --steps has unknown 'day'"),
    "recipe_study.py": (["--variants=base,nope"], "error: --variants has unknown 'nope'"),
    "precision.py": (["--seeds=0,-1"], "error: --seeds must be a comma-separated list of integers >= 0, got '0,-1'"),
    "probe_cost.py": (["--probe_images=0"], "error: --probe_images must be an integer in [1, 100], got '0'"),
    "run_phases.py": (["--work={tmp}/a-file"], "error: --work '{tmp}/a-file' is a file, not a folder"),
    "speed.py": (["--workers=-1"], "error: --workers must be an integer >= 0, got '-1'"),
    "time_to_acc.py": (["--target=2"], "error: --target must be a number >= 0 and <= 1, got '2'"),
    "trust_coverage.py": (["--sizes=1,8"], "error: --sizes must be a comma-separated list of integers >= 2, got '1,8'"),
    "trust_speed.py": (["--checkpoint={tmp}"], "error: --checkpoint '{tmp}' is not a file"),
    "tta_views.py": (["{tmp}"], "error: run '{tmp}' has no predictions.npz"),
    "wandb_overhead.py": (["--repeats=0"], "error: --repeats must be an integer >= 1, got '0'"),
}


def refused(script: str, args: list[str], tmp_path: Path) -> tuple[int, str, str, bytes, Path]:
    """``bench/<script>``'s ``main`` (:func:`call_main`) with ``args`` ({tmp}: a folder holding one file) and an
    earlier results file; its exit status, stdout, stderr, the file's bytes before, and the file."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "a-file").touch()
    out = tmp_path / "results.json"
    out.write_text('{"earlier": "figures"}\n')
    before = out.read_bytes()
    args = [arg.replace("{tmp}", str(tmp)) for arg in args]
    return *call_main(script, [*args, f"{OUT_FLAG.get(script, '--json')}={out}"]), before, out


def test_every_bench_script_has_a_bad_flag_case():
    assert set(BAD_FLAG) == set(SCRIPTS)  # a new benchmark gets its case here


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_refuses_a_bad_flag_before_any_work(script, tmp_path):
    args, message = BAD_FLAG[script]
    code, stdout, stderr, before, out = refused(script, args, tmp_path)
    assert code == 2, stdout[-2000:] + stderr[-2000:]
    assert stderr.strip().startswith(message.replace("{tmp}", str(tmp_path / "tmp"))), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stdout == "" and out.read_bytes() == before  # nothing done, nothing written


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_refuses_a_results_file_in_a_missing_folder(script, tmp_path):
    flag = OUT_FLAG.get(script, "--json")
    code, stdout, stderr = call_main(script, [f"{flag}={tmp_path / 'missing' / 'r.json'}"])
    assert code == 2, stdout[-2000:] + stderr[-2000:]
    assert stderr.strip() == (f"error: {flag} '{tmp_path / 'missing' / 'r.json'}' is in a folder that does "
                              f"not exist ('{tmp_path / 'missing'}')")
    assert stdout == "" and not (tmp_path / "missing").exists()


def test_a_bench_command_line_refuses_a_bad_flag_in_one_line(tmp_path):
    out = tmp_path / "results.json"
    out.write_text('{"earlier": "figures"}\n')
    done = run_cli("--steps=-1", f"--json={out}", script="bench/cpu.py", timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: --steps must be an integer >= 1, got '-1'\n"
    assert out.read_text() == '{"earlier": "figures"}\n'


def test_parser_refuses_in_one_line(capsys):
    from bench import common

    parser = common.Parser("A benchmark.\n\nMore.")
    parser.add_argument("--seeds", type=common.ints(minimum=0), default="0")
    parser.add_argument("--repeats", type=common.count(1), default=2)
    parser.add_argument("--steps", type=common.choices(["a", "b"]), default="a,b")
    args = parser.parse(["--seeds=1,2"])
    assert args.seeds == [1, 2] and args.repeats == 2 and args.steps == ["a", "b"]  # text defaults converted too
    assert parser.parse(["--repeats=3", "--", "--lr=1"], rest="--").rest == ["--lr=1"]
    assert parser.parse(["--lr=1", "--repeats=3"], rest="unknown").rest == ["--lr=1"]
    for argv, message in [
        (["--seed=1"], "error: unknown flag --seed (did you mean --seeds?)"),  # no abbreviations
        (["--repeats=1.5"], "error: --repeats must be an integer, got '1.5'"),
        (["--steps=a,c"], "error: --steps has unknown 'c' (choose from a, b)"),
        (["stray"], "error: unexpected argument 'stray' (flags look like --key=value)"),
        (["--repeats"], "error: --repeats expected one argument"),
    ]:
        with pytest.raises(SystemExit) as exit:
            parser.parse(argv)
        assert exit.value.code == 2 and capsys.readouterr().err == message + "\n"


def test_results_merge_by_key_and_list_what_an_earlier_run_measured(tmp_path):
    from bench.common import Results

    path, me = tmp_path / "r.json", {"device": "cpu", "cpu": "a CPU", "threads": 1, "torch": torch.__version__}
    base = {"train": {}, "table": []}  # what every file of this benchmark holds
    Results(path, me, base).write({**me, "train": {"a": 1.0, "b": 2.0}, "note": "first", "rounds": {"a": [1, 2]}})
    merged = Results(path, me, base).write({**me, "train": {"b": 3.0}, "rounds": {}})
    assert merged["train"] == {"a": 1.0, "b": 3.0} and merged["note"] == "first" and merged["table"] == []
    assert merged["rounds"] == {"a": [1, 2]}  # an empty dict measured nothing: the earlier entries stay
    assert set(merged["kept_from_earlier"]) == {"train.a", "note", "rounds.a"}  # the base's empty table is nobody's
    assert json.loads(path.read_text()) == merged
    again = Results(path, me, base).write({**me, "train": {"a": 4.0, "b": 5.0}, "note": "third", "rounds": {"a": [3]}})
    assert "kept_from_earlier" not in again and again["train"] == {"a": 4.0, "b": 5.0}  # all measured again
    deep = Results(path, me, base, depth=1).write({**me, "train": {"b": 6.0}})
    assert deep["train"] == {"b": 6.0} and set(deep["kept_from_earlier"]) == {"note", "rounds"}  # whole below depth


def test_results_refuse_another_machines_file_or_an_unreadable_one(tmp_path, capsys):
    from bench.common import Results

    path = tmp_path / "r.json"
    for content, message in [
        ({"device": "cpu", "cpu": "another CPU", "train": {}}, f"error: {path} holds figures measured with cpu "
         "'another CPU', not this run's 'a CPU'; move it away or write elsewhere"),
        ({"threads": 2}, f"error: {path} holds figures measured with threads 2, not this run's 1"),
        ([1, 2], f"error: {path} exists and is not a JSON object; move it away or write elsewhere"),
        ("{broken", f"error: {path} exists and is not a readable JSON file"),
    ]:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        before = path.read_bytes()
        with pytest.raises(SystemExit) as exit:
            Results(path, {"device": "cpu", "cpu": "a CPU", "threads": 1})
        assert exit.value.code == 2 and capsys.readouterr().err.startswith(message) and path.read_bytes() == before
    path.write_text(json.dumps({"device": "cpu", "gpu": None}))  # what neither says, or both say alike: merged
    assert Results(path, {"device": "cpu", "cpu": "a CPU", "gpu": None}).write({"x": 1})["device"] == "cpu"


def test_results_of_a_run_that_measured_nothing_leave_the_file(tmp_path, capsys):
    from bench.common import Results

    path = tmp_path / "r.json"
    path.write_text('{"train": {"a": 1.0}}\n')
    assert Results(path).finish({"train": {}}, measured=False, why="every configuration failed") == 1
    assert path.read_text() == '{"train": {"a": 1.0}}\n'
    assert capsys.readouterr().err == (f"error: nothing was measured: every configuration failed; {path} is left as "
                                       "it was\n")
    assert Results(tmp_path / "out" / "new.json").finish({"b": 2}, measured=True) == 0  # its folder made
    assert json.loads((tmp_path / "out" / "new.json").read_text()) == {"b": 2}


def test_cpu_times_every_configuration_side_by_side(cifar_subset, tmp_path):
    """bench/cpu.py for real on a few images: every training, evaluation and CAM configuration and the tutorial get
    a positive images/s, the ratios are those figures' ratios. torch.compile runs with its `eager` backend here
    (dynamo's graph capture and guards without inductor's minutes of code generation)."""
    from bench.common import cpu_model
    from train.engine import cpu_bf16_native

    out = tmp_path / "results" / "cpu.json"
    out.parent.mkdir()
    done = call_cli("--data_dir", str(cifar_subset), "--batch_size=16", "--eval_batch_size=32", "--steps=1",
                    "--compile_steps=1", "--rounds=1", "--cam_images=8", "--compile_backend=eager",
                    "--end_to_end_images=1000", f"--json={out}", script="bench/cpu.py")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    pairs = [f"{p}_{layout}" for p in ("fp32", "bf16") for layout in ("nchw", "channels_last")]
    assert set(result["train"]) == {f"{pair}_{way}" for pair in pairs for way in ("eager", "compiled")}
    assert set(result["eval"]) == set(result["cam"]) == set(pairs)
    figures = [*result["train"].values(), *result["eval"].values(), *result["cam"].values()]
    assert all(0 < ips < 1e5 for ips in figures) and 0 < result["tutorial_images_per_s"] < 1e5
    assert result["cpu"] == cpu_model() and result["cores"] >= 1 and result["torch"] == torch.__version__
    assert result["bf16_native"] == cpu_bf16_native() and result["command"].startswith("python bench/cpu.py")
    assert result["date"] and result["errors"] == {} and result["batch_size"] == 16
    ratios, base = result["ratios"], result["train"]["fp32_nchw_eager"]
    for name, ips in result["train"].items():
        assert ratios["train_vs_tutorial"][name] == pytest.approx(ips / result["tutorial_images_per_s"])
        assert ratios["train_vs_fp32_nchw_eager"][name] == pytest.approx(ips / base)
    assert ratios["eval_vs_fp32_nchw"]["fp32_nchw"] == ratios["cam_vs_fp32_nchw"]["fp32_nchw"] == 1
    assert set(result["compile_seconds"]) == set(result["end_to_end"]) == {f"{pair}_compiled" for pair in pairs}
    assert all(seconds >= 0 for seconds in result["compile_seconds"].values())
    for name, run in result["end_to_end"].items():
        assert run["compiled_seconds"] == pytest.approx(result["compile_seconds"][name] + 1000 / result["train"][name])
    diff = result["cam_max_abs_diff"]  # the same maps in either layout; bf16 close to fp32, maps in [0, 1]
    assert diff["fp32_nchw"] == 0 and diff["fp32_channels_last"] < 1e-3 and diff["bf16_channels_last"] < 0.5
    assert [len(rounds) for rounds in result["all_rounds"]["train"].values()] == [1] * 8
    assert "tutorial (ImageFolder + DataLoader x2, fp32 NCHW eager)" in done.stdout and f"wrote {out}" in done.stdout


# ---------------------------------------------------------------------------------------------------------------------
# bench/label_quality.py: label issues scored against human verdicts


def test_label_quality_scores_a_runs_flags_and_every_variant_against_the_verdicts(trained, cifar_subset, tmp_path):
    """A candidates file in the dev half's format, built on the shared run's own test images: two of its flags
    judged label errors, one a kept label, one unflagged image a label error (missed), one unflagged kept label."""
    import numpy as np

    run = trained["out"]
    flags = [issue["file"] for issue in json.loads((run / "label_issues.json").read_text())["issues"]]
    with np.load(run / "predictions.npz", allow_pickle=False) as saved:
        unflagged = [name for name in saved["file"].tolist() if name not in flags]
    assert len(flags) >= 3 and len(unflagged) >= 2
    verdicts = {flags[0]: "label_error", flags[2]: "label_error", flags[1]: "label_kept",
                unflagged[0]: "label_error", unflagged[1]: "label_kept"}
    csv_path = tmp_path / "candidates.csv"
    csv_path.write_text("cifar_test_index,file,human_verdict\n"
                        + "".join(f"{i},{name},{v}\n" for i, (name, v) in enumerate(verdicts.items())))
    out, png = tmp_path / "lq.json", tmp_path / "lq.png"
    done = call_cli(str(run), f"--candidates={csv_path}", f"--data_dir={cifar_subset}", f"--png={png}",
                    f"--json={out}", script="bench/label_quality.py")
    assert done.returncode == 0, done.stderr[-3000:]
    own = json.loads(out.read_text())[run.name]["run_method"]
    assert own["errors"] == 3 and own["kept"] == 2 and own["flags"] == len(flags)
    assert own["errors_flagged"] == 2 and own["kept_flagged"] == 1 and own["errors_top25"] == 2
    rows = json.loads(out.read_text())[run.name]["variants"]
    assert len(rows) == 2 * 4 * 5 * 2  # views x probabilities x cleanlab filters x rankings
    same = next(r for r in rows if (r["view"], r["probs"], r["filter_by"], r["rank_by"])
                == ("flip", "softmax", "prune_by_class", "normalized_margin"))  # the run's own method
    assert abs(same["flags"] - own["flags"]) <= max(2, own["flags"] // 20)  # from float16 logits: nearly the same
    neq = next(r for r in rows if r["filter_by"] == "predicted_neq_given" and r["view"] == "flip"
               and r["probs"] == "softmax")
    with np.load(run / "predictions.npz", allow_pickle=False) as saved:
        mean = saved["logits"].astype(float) + saved["logits_flip"].astype(float)
        assert neq["flags"] == int((mean.argmax(1) != saved["label"]).sum())  # every disagreement, by definition
    with Image.open(png) as picture:
        assert picture.format == "PNG" and min(picture.size) > 300


def test_label_quality_logit_norm_reads_only_the_direction_of_each_images_logits():
    """``logit_norm`` probabilities: each image's centred logits at unit length, then a temperature fitted out of
    sample: scaling an image's logits by any positive factor, or shifting them all by a constant, changes none of its
    flags or their order; the plain softmax's flags do change (the rescaling is not a no-op)."""
    import numpy as np

    from bench.label_quality import variants

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 600)
    logits = rng.normal(0, 1, (600, 10)) + 4 * np.eye(10)[labels]  # a model that is right most of the time
    logits[:60] = rng.normal(0, 1, (60, 10)) + 4 * np.eye(10)[(labels[:60] + 1) % 10]  # and sure of another class
    scale = rng.uniform(0.2, 5, (600, 1))
    saved = {"label": labels, "logits": logits, "logits_flip": logits}
    rescaled = {"label": labels, "logits": logits * scale + 3.0, "logits_flip": logits * scale + 3.0}
    rows, again = variants(saved), variants(rescaled)
    key = ("view", "probs", "filter_by", "rank_by")
    plain = {tuple(r[k] for k in key): r["ranked"].tolist() for r in rows}
    moved = {tuple(r[k] for k in key): r["ranked"].tolist() for r in again}
    normed = [k for k in plain if k[1] == "logit_norm"]
    assert len(normed) == 2 * 5 * 2 and all(plain[k] == moved[k] for k in normed)
    assert any(plain[k] != moved[k] for k in plain if k[1] == "softmax")
    assert len(plain[("flip", "logit_norm", "prune_by_class", "normalized_margin")]) >= 30  # it flags


def test_label_quality_averages_other_models_over_the_same_images(trained, tmp_path):
    """``--ensemble``: a second model that predicts exactly the first one's flip view (its image and mirror logits
    swapped) changes no flag of the averaged view; a model of other images is refused in one line."""
    import numpy as np

    from explain.report import write_npz

    run = trained["out"]
    with np.load(run / "predictions.npz", allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}
    twin, other, narrow = tmp_path / "twin", tmp_path / "other", tmp_path / "narrow"
    for folder, changed in ((twin, {"logits": arrays["logits_flip"], "logits_flip": arrays["logits"]}),
                            (other, {"file": arrays["file"][::-1].copy()}),
                            (narrow, {"logits": arrays["logits"][:, :5], "logits_flip": arrays["logits_flip"][:, :5]})):
        folder.mkdir()
        write_npz(folder / "predictions.npz", {**arrays, **changed})
    out = tmp_path / "lq.json"
    done = call_cli(str(run), f"--ensemble={twin}", f"--json={out}", script="bench/label_quality.py")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())[run.name]
    assert result["ensemble"] == [str(twin)]
    rows = {(r["view"], r["probs"], r["filter_by"], r["rank_by"]): r for r in result["variants"]}
    # views x probabilities x filters x rankings, and the ensemble view also ranked by cleanlab's ensemble scores
    assert len(rows) == 3 * 4 * 5 * 2 + 4 * 5 * 2 and {key[0] for key in rows} == {"single", "flip", "ensemble_flip"}
    assert {key[3] for key in rows if key[0] == "ensemble_flip"} == {
        "normalized_margin", "self_confidence", "ensemble_normalized_margin", "ensemble_self_confidence"}
    figures = ("errors_flagged", "kept_flagged", "flags", "errors_top25", "errors_top50", "errors_top100")
    for (view, probs, filter_by, rank_by), row in rows.items():
        if view == "ensemble_flip":  # (a + b) / 2 + (b + a) / 2, halved: the flip view to the last bit; and two
            # members with the same probabilities score every image as each does: the same ranking
            flip = rows[("flip", probs, filter_by, rank_by.removeprefix("ensemble_"))]
            assert [row[k] for k in figures] == [flip[k] for k in figures], (probs, filter_by, rank_by)
    before = out.read_bytes()
    refused_member = call_cli(str(run), f"--ensemble={other}", f"--json={out}", script="bench/label_quality.py")
    assert refused_member.returncode == 2 and refused_member.stderr.strip() == (
        f"error: --ensemble {other / 'predictions.npz'} holds other images (or another order or labels) than the "
        f"run's: an ensemble needs predictions of the same images")
    refused_classes = call_cli(str(run), f"--ensemble={narrow}", f"--json={out}", script="bench/label_quality.py")
    assert refused_classes.returncode == 2 and refused_classes.stderr.strip() == (
        f"error: --ensemble {narrow / 'predictions.npz'} has logits of shape (200, 5), the run's (200, 10): an "
        f"ensemble needs models of the same classes")
    assert out.read_bytes() == before


def test_a_bad_predictions_npz_is_one_line_for_every_script_that_reads_one(trained, cifar_subset, tmp_path):
    """``label_quality.py`` (the run's file and ``--ensemble``'s) and ``tta_views.py`` read a ``predictions.npz``
    through one reader: an empty file, text, a broken zip, a lone ``.npy`` and an archive without the logits are each
    a one-line error naming the file, never a traceback."""
    import numpy as np

    from explain.report import write_npz

    run = trained["out"]
    with np.load(run / "predictions.npz", allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}
    bad = {"empty": b"", "text": b"hello", "zip": b"PK\x03\x04broken"}
    for name, content in bad.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.npz").write_bytes(content)
    (tmp_path / "npy").mkdir()
    with open(tmp_path / "npy" / "predictions.npz", "wb") as handle:
        np.save(handle, arrays["logits"])
    (tmp_path / "nologits").mkdir()
    write_npz(tmp_path / "nologits" / "predictions.npz", {k: v for k, v in arrays.items() if k != "logits"})
    for name in [*bad, "npy", "nologits"]:
        folder = tmp_path / name
        npz = folder / "predictions.npz"
        shutil.copy(run / "label_issues.json", folder / "label_issues.json")
        (folder / "best.pt").write_bytes(b"")  # tta_views reads the predictions before the weights
        calls = {"label_quality.py": ([str(folder)], ""), "label_quality.py --ensemble": (
                     [str(run), f"--ensemble={folder}"], "--ensemble "),
                 "tta_views.py": ([str(folder), f"--data_dir={cifar_subset}"], "")}
        for call, (argv, flag) in calls.items():
            out = tmp_path / f"{name}.json"
            code, stdout, stderr = call_main(call.split()[0], [*argv, f"--json={out}"])
            assert code == 2 and "Traceback" not in stderr and not out.exists(), (name, call, stderr[-2000:])
            last = stderr.strip().splitlines()[-1]
            if name == "nologits" and call == "tta_views.py":  # it needs only the files and labels: on to the weights
                assert last.startswith("error: ") and "predictions.npz" not in last, last
                continue
            assert last.startswith(f"error: {flag}{npz} is not a predictions.npz ("), (name, call, last)
            assert name != "nologits" or last.endswith("(it lacks logits)"), last


def test_label_quality_refuses_a_bad_candidates_file_in_one_line(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("cifar_test_index,file,human_verdict\n1,test/cat/0001.jpg,maybe\n")
    code, _, stderr = call_main("label_quality.py", [str(trained["out"]), f"--candidates={bad}",
                                                     f"--json={tmp_path / 'x.json'}"])
    assert code == 2 and stderr.strip() == (f"error: --candidates {str(bad)!r}: human_verdict must be label_error or "
                                            f"label_kept, got 'maybe'")
    code, _, stderr = call_main("label_quality.py", [str(trained["out"]), f"--png={tmp_path / 'x.png'}",
                                                     f"--json={tmp_path / 'x.json'}"])
    assert code == 2 and stderr.strip() == "error: --png needs --data_dir (the images the run checked)"
    assert not (tmp_path / "x.json").exists()


# bench/tta_views.py: flip + translate TTA against flip TTA on a finished run's images


def test_tta_views_reads_the_runs_own_figures_and_adds_the_translate_views_for_label_quality(trained, cifar_subset,
                                                                                            tmp_path):
    import numpy as np

    run, out, views = trained["out"], tmp_path / "t.json", tmp_path / "views"
    done = call_cli(str(run), f"--data_dir={cifar_subset}", f"--out={views}", f"--json={out}",
                    script="bench/tta_views.py")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())[run.name]
    summary = trained["summary"]  # the six views' first two are the run's own evaluation, to the image
    assert result["images"] == 200 and result["acc"]["flip"] == summary["test_acc"]
    assert result["acc"]["single"] == summary["test_acc_no_tta"]
    paired = result["flip_translate_vs_flip"]
    assert paired["diff"] == pytest.approx(result["acc"]["flip_translate"] - result["acc"]["flip"])
    assert paired["ci95"][0] <= paired["diff"] <= paired["ci95"][1] and paired["images"] == 200
    with np.load(run / "predictions.npz") as before, np.load(views / "predictions.npz") as after:
        assert all(np.array_equal(before[name], after[name]) for name in before.files)  # the run's arrays, kept
        assert after["logits_translate"].shape == after["logits_translate_flip"].shape == before["logits"].shape
        assert not np.array_equal(after["logits_translate"], before["logits"])  # other views, other logits
    scored = call_cli(str(views), f"--json={tmp_path / 'lq.json'}", script="bench/label_quality.py")
    assert scored.returncode == 0, scored.stderr[-3000:]
    rows = json.loads((tmp_path / "lq.json").read_text())[views.name]["variants"]
    assert {row["view"] for row in rows} == {"single", "flip", "flip_translate"} and len(rows) == 3 * 4 * 5 * 2

    again = call_cli(str(run), f"--data_dir={cifar_subset}", f"--out={views}", f"--json={out}",
                     script="bench/tta_views.py")  # a second pass into the same folder
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: --out {str(views)!r} is not empty (a run never overwrites another)")
    other = tmp_path / "other"
    (other / "test" / "cat").mkdir(parents=True)
    shutil.copy(next((cifar_subset / "test" / "cat").iterdir()), other / "test" / "cat" / "0000.jpg")
    missing = call_cli(str(run), f"--data_dir={other}", f"--json={out}", script="bench/tta_views.py")
    assert missing.returncode == 2 and missing.stderr.strip().startswith(
        f"error: --data_dir {str(other)!r} lacks 199 of the run's images (first: test/")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(run / "predictions.npz", no_weights)
    refused_run = call_cli(str(no_weights), f"--data_dir={cifar_subset}", f"--json={out}", script="bench/tta_views.py")
    assert refused_run.returncode == 2 and refused_run.stderr.strip() == (
        f"error: {no_weights / 'best.pt'} is not a file (give --checkpoint: the run kept no best.pt)")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    refused_file = call_cli(str(run), f"--checkpoint={tmp_path / 'notes.pt'}", f"--data_dir={cifar_subset}",
                            f"--json={out}", script="bench/tta_views.py")
    assert refused_file.returncode == 2 and refused_file.stderr.strip() == (
        f"error: checkpoint {str(tmp_path / 'notes.pt')!r} is truncated or corrupt (not a torch.save file)")


def test_a_paired_accuracy_interval_covers_95_percent_at_the_real_runs_size():
    """The Wald interval of a paired difference of two predictions' accuracy, simulated at 10,000 images with as
    many discordant images as the real run had (~58 each way), with no true difference and with a real one."""
    import numpy as np

    from bench.tta_views import paired_interval

    rng = np.random.default_rng(0)
    for p_gain, p_lost in ((0.0058, 0.0058), (0.008, 0.004)):
        truth, hits = p_gain - p_lost, 0
        for _ in range(2000):
            draw = rng.random(10_000)
            flip_right = draw >= p_gain  # gained: right only with translate; lost: right only without
            translate_right = ~((draw >= p_gain) & (draw < p_gain + p_lost))
            low, high = paired_interval(flip_right, translate_right)["ci95"]
            hits += low <= truth <= high
        assert 0.935 <= hits / 2000 <= 0.965, (p_gain, p_lost, hits / 2000)
    same = np.ones(100, dtype=bool)
    assert paired_interval(same, same) == {"diff": 0.0, "ci95": [0.0, 0.0], "verdict": "inconclusive", "gained": 0,
                                           "lost": 0, "images": 100}
    worse = same.copy()
    worse[:30] = False
    assert paired_interval(same, worse)["verdict"] == "worse" and paired_interval(worse, same)["verdict"] == "better"
    mixed = same.copy()
    mixed[:3] = False
    swapped = same.copy()
    swapped[3:6] = False  # three gained, three lost: no difference either way
    assert paired_interval(mixed, swapped)["verdict"] == "inconclusive"


def test_ctrl_c_on_a_bench_script_is_one_stopped_line_not_a_traceback(cifar_subset, tmp_path):
    import signal

    out = tmp_path / "s.json"
    process = subprocess.Popen(
        [sys.executable, "bench/recipe_study.py", f"--data_dir={cifar_subset}", "--variants=base",
         f"--seeds={','.join(map(str, range(50)))}", "--train_subset=100", "--test_subset=100", "--epochs=1",
         "--batch_size=50", f"--json={out}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"})
    first = process.stdout.readline()  # the first seed's line: the script is inside its measurement
    assert first.startswith("  base seed 0:"), first + process.stderr.read()[-2000:]
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == ("stopped: interrupted (Ctrl-C); results files hold what was written "
                                               "before it")
    assert "Traceback" not in stderr and not out.exists()


def test_a_lesser_measurement_never_replaces_a_results_file_without_replace(tmp_path):
    """``bench/trust_speed.py`` with small flags replaced the real-data figure (32 images, 7.43x) with a 12-image one
    and exited 0 (issue 37 item 2): refused before any work, unless --replace says so."""
    out = tmp_path / "trust_speed.json"
    committed = json.loads((REPO / "bench" / "results" / "trust_speed.json").read_text())
    out.write_text(json.dumps({**committed, "threads": torch.get_num_threads()}))  # this worker's, as if measured here
    before = out.read_bytes()
    small = ["--images=20", "--samples=4", "--trust_images=12", "--repeats=1", f"--json={out}"]
    code, stdout, stderr = call_main("trust_speed.py", small)
    assert code == 2 and stdout == "" and out.read_bytes() == before
    assert stderr.strip() == (f"error: {out} holds figures measured under other conditions (trust_images 32 there, 12 "
                              f"here); pass --replace to replace them, or write elsewhere with --json")
    code, stdout, stderr = call_main("trust_speed.py", [*small, "--replace"])
    assert code == 0, stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["trust_images"] == 12 and result["conditions"]["trust_images"] == 12
    code, _, stderr = call_main("trust_speed.py", [*small, "--samples=5"])  # now the file's conditions
    assert code == 2 and "(samples 4 there, 5 here)" in stderr


def test_recipe_study_pools_the_spread_of_every_variants_paired_differences():
    """Two variants over three seeds: one variance from both variants' paired differences (2 + 2 degrees of
    freedom) around each variant's own mean (the end-to-end test above has one variant: nothing to pool)."""
    from scipy import stats

    from bench.recipe_study import pooled

    accs = {"base": [0.50, 0.52, 0.48], "a": [0.60, 0.61, 0.59], "b": [0.51, 0.52, 0.47]}
    runs = [{"variant": v, "seed": seed, "model": {"flip": acc}} for v, row in accs.items()
            for seed, acc in enumerate(row)]
    result = pooled(runs)
    diffs = {v: [x - b for x, b in zip(row, accs["base"], strict=True)] for v, row in accs.items() if v != "base"}
    squares = sum(sum((x - sum(d) / 3) ** 2 for x in d) for d in diffs.values())
    half = stats.t.ppf(0.975, 4) * (squares / 4 / 3) ** 0.5  # by hand: pooled variance over 4 dof, n = 3 each
    assert set(result) == {"a", "b"} and result["a"]["dof"] == result["b"]["dof"] == 4
    assert result["a"]["mean"] == pytest.approx(0.1) and result["b"]["mean"] == pytest.approx(0.0)
    assert result["a"]["high"] - result["a"]["low"] == pytest.approx(2 * half)
    assert result["a"]["verdict"] == "better" and result["b"]["verdict"] == "inconclusive"
    assert pooled([r for r in runs if r["seed"] == 0]) == {}  # one seed: no spread to pool


def test_recipe_study_optimizer_tricks_change_what_they_name_and_nothing_else():
    """``bias_lr`` with ``lr_end``: the schedule ends at that fraction of the peak, and the BatchNorm biases (only
    they) at the scale's multiple of it, weight decay as before; ``lookahead``: after its second k = 6 steps the
    weights are half way between where six and twelve plain steps (same init, same batches) take them (timm's
    Lookahead starts its slow copy at its first sync, so the first six steps are plain ones)."""
    from bench.recipe_study import optimizer_tricks
    from tests.test_engine import separable
    from train.config import Config, resolve
    from train.engine import build_recipe, train_one_epoch

    data = separable(96)  # 6 batches of 16 an epoch: one lookahead cycle

    def trained(parts: set[str], epochs: int = 1, end: float = 0.07):
        config = resolve(Config(batch_size=16, epochs=epochs, precision="fp32", min_res=0, stem_init="default"))
        torch.manual_seed(0)
        recipe = build_recipe(config, data, data, torch.device("cpu"))
        optimizer, scheduler = optimizer_tricks(recipe, parts, config, bias_lr_scale=8.0, lr_end=end)
        lrs, snapshots = [], []
        for _ in range(epochs):
            train_one_epoch(recipe.model, recipe.train_loader, optimizer, scheduler, recipe.train_loss,
                            device=torch.device("cpu"), amp=None, channels_last=recipe.channels_last)
            lrs.append({id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]})
            snapshots.append({k: v.detach().clone() for k, v in recipe.model.named_parameters()})
        return recipe, optimizer, snapshots, lrs, config

    plain, plain_opt, fast, plain_lrs, config = trained(set(), epochs=2)
    assert sorted(plain_lrs[-1].values()) == pytest.approx([config.lr * 1e-4] * len(plain_lrs[-1]))  # ~0 at the end
    plain_names = {id(p): n for n, p in plain.model.named_parameters()}
    plain_lr = {plain_names[pid]: lr for pid, lr in plain_lrs[-1].items()}
    plain_decay = {plain_names[id(p)]: g["weight_decay"] for g in plain_opt.param_groups for p in g["params"]}

    recipe, optimizer, _, lrs, config = trained({"bias_lr", "lr_end"}, epochs=2, end=0.07)
    biases = {id(m.bias) for m in recipe.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    names = {id(p): n for n, p in recipe.model.named_parameters()}
    assert len(biases) == 20 and sorted(names[i] for i in lrs[0]) == sorted(names.values())  # each once
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for pid, lr in lrs[-1].items():  # after the last batch: 0.07 of the peak, 8x that for the BatchNorm biases
        assert lr == pytest.approx(config.lr * 0.07 * (8.0 if pid in biases else 1.0)), names[pid]
        assert lr / plain_lr[names[pid]] == pytest.approx(700 * (8.0 if pid in biases else 1.0))
        assert decay[pid] == plain_decay[names[pid]]  # weight decay as before
    assert optimizer.defaults["fused"] and optimizer.defaults["nesterov"]

    _, _, looked, _, _ = trained({"lookahead"}, epochs=2)
    for name, weight in looked[1].items():
        torch.testing.assert_close(weight, fast[0][name] + 0.5 * (fast[1][name] - fast[0][name]), msg=name)
    assert not all(torch.equal(w, fast[1][n]) for n, w in looked[1].items())


def test_recipe_study_refuses_a_variant_its_base_already_has(cifar_subset, tmp_path):
    out = tmp_path / "s.json"
    done = call_cli(f"--data_dir={cifar_subset}", "--base=whiten,prog", "--variants=base,whiten,lookahead",
                    f"--json={out}", script="bench/recipe_study.py")
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip() == "error: --variants whiten: --base already has it, so it would train base again"


def test_recipe_study_pairs_each_variant_with_base_by_seed_and_reanalyzes_without_training(cifar_subset, tmp_path):
    out = tmp_path / "s.json"
    tiny = [f"--data_dir={cifar_subset}", "--variants=base,prog", "--seeds=0,1", "--train_subset=100",
            "--test_subset=100", "--epochs=2", "--prog_epochs=3", "--batch_size=50", f"--json={out}"]
    done = call_cli(*tiny, script="bench/recipe_study.py")
    assert done.returncode == 0, done.stderr[-3000:]
    study = json.loads(out.read_text())["study"]["base+prog"]
    runs = {(r["variant"], r["seed"]): r for r in study["runs"]}
    assert set(runs) == {(v, s) for v in ("base", "prog") for s in (0, 1)}
    assert [c["resolution"] for c in runs[("prog", 0)]["curve"]] == [16, 24, 32]  # rising to full size
    assert {c["resolution"] for c in runs[("base", 0)]["curve"]} == {32}
    for run in runs.values():  # the three TTA levels of the model and of its EMA, fractions of 100 test images
        assert all(0 <= run[w][v] <= 1 and round(run[w][v] * 100, 3).is_integer()
                   for w in ("model", "ema") for v in ("single", "flip", "flip_translate"))
    diff = study["paired_vs_base"]["prog"]["model"]["flip"]
    expected = [runs[("prog", s)]["model"]["flip"] - runs[("base", s)]["model"]["flip"] for s in (0, 1)]
    assert diff["diffs"] == pytest.approx(expected) and diff["low"] <= diff["mean"] <= diff["high"]
    pooled = study["pooled_vs_base"]["model"]["prog"]
    assert pooled["mean"] == pytest.approx(diff["mean"]) and pooled["dof"] == 1
    before = out.read_text()
    again = call_cli(*tiny, "--analyze_only", script="bench/recipe_study.py")
    assert again.returncode == 0, again.stderr[-3000:]
    redone = json.loads(out.read_text())["study"]["base+prog"]
    assert redone["runs"] == study["runs"] and redone["command"] == study["command"]  # the runs' own command
    for weights in ("model", "ema"):  # the same figures from the saved runs (their float32 digits: approx)
        for variant, figures in study["pooled_vs_base"][weights].items():
            again = redone["pooled_vs_base"][weights][variant]
            assert again["verdict"] == figures["verdict"] and again["mean"] == pytest.approx(figures["mean"], abs=1e-6)
    assert json.loads(before)["study"].keys() == json.loads(out.read_text())["study"].keys()


def test_recipe_cpu_runs_from_any_folder_without_a_bench_data_folder(tmp_path, cifar_subset):
    """The default ``--work`` (``.bench-data/recipe`` in the repo) need not exist: a fresh clone has no
    ``.bench-data/``, and the CI found the default refused ("is in a folder that does not exist") whenever no
    earlier test had made it. Run from a folder without one, the flags after it are what is checked."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "recipe_cpu.py"), f"--data_dir={cifar_subset}",
                           "--steps=profile", "--compile_backend=fast", f"--json={tmp_path / 'p.json'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: --compile_backend 'fast' is not one of "), \
        done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # nothing made where it was run


def test_recipe_cpu_profile_says_where_a_training_step_spends_its_time(tmp_path, cifar_subset):
    out = tmp_path / "p.json"
    bad = call_cli(f"--data_dir={cifar_subset}", "--steps=profile", "--compile_backend=fast", f"--json={out}",
                   script="bench/recipe_cpu.py")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --compile_backend 'fast' is not one of ")
    assert not out.exists()
    # torch.compile through its eager backend (dynamo's capture, no code generation): inductor's C++ compile of two
    # shapes took 60 s of CPU on a machine without a compile cache (the CI's), 12 s with one
    done = run_cli(f"--data_dir={cifar_subset}", f"--work={tmp_path / 'w'}", "--steps=profile", "--batch_sizes=8,16",
                   "--resolutions=16,32", "--profile_steps=1", "--profile_batch=8", "--compile_backend=eager",
                   f"--json={out}", script="bench/recipe_cpu.py", timeout=600)  # its own process: in a test worker
    assert done.returncode == 0, done.stderr[-3000:]  # the profiler took 6x as long
    profile = json.loads(out.read_text())["profile"]
    assert set(profile["images_per_second"]) == {"batch8_res16", "batch8_res32", "batch16_res16", "batch16_res32"}
    assert all(v > 0 for v in profile["images_per_second"].values())
    assert profile["compile_backend"] == "eager" and set(profile["compile_first_step_seconds"]) == {"res16", "res32"}
    assert set(profile["compiled_images_per_second"]) == {"batch8_res16", "batch8_res32"}
    assert all(v > 0 for v in profile["compiled_images_per_second"].values())
    skipped = call_cli(f"--data_dir={cifar_subset}", "--steps=profile", "--batch_sizes=8", "--resolutions=16",
                       "--profile_steps=1", "--profile_batch=8", "--compile_backend=none", f"--json={out}",
                       script="bench/recipe_cpu.py")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    profile = json.loads(out.read_text())["profile"]
    assert profile["compile_backend"] == "none" and profile["compiled_images_per_second"] == {}
    assert set(profile["images_per_second"]) == {"batch8_res16"}
    shares = profile["time_shares_res32"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["convolution backward"] + shares["convolution forward"] > 0.1  # each operator counted once
    assert all(share >= 0 for share in shares.values())
