"""Our recipe beside the peer on this CPU: airbench94, the 20-epoch default and the one-hour command, on the same JPEG
copy of CIFAR-10, one after another, written to ``bench/results/recipe_cpu.json``.

Steps (``--steps``, in this order; each is written as soon as it is measured, earlier steps of the file are kept):

* ``profile`` — where a training step's time goes (``torch.profiler``) and training images/s per batch size and
  resolution (``--batch_sizes``, ``--resolutions``);
* ``airbench94`` — ``bench/airbench94.py --device cpu`` (airbench 0.1.8's method ported to the CPU, bf16 autocast)
  on the same images in airbench's format (``bench/cifar_sets.py``): ``acc`` (its ``tta_level=2``), ``acc_flip``,
  ``acc_single``, ``seconds`` (its own timer: whitening init + training) per seed;
* ``default_20`` — ``python train/run.py --data_dir DATA`` (the default: 20 epochs, every explain output) with
  ``--trust_images 64``, so that the same run is the real run of ``docs/real-run/``;
* ``hour`` — the documented one-hour command (:data:`HOUR_FLAGS`), explain off.

For ours ``acc`` is ``val/acc`` (flip TTA), ``acc_single`` the single pass, ``seconds`` the training steps alone
(``summary.json``'s ``train_step_seconds``: no evaluation, no explain, no start-up; airbench's timer covers the same),
``seconds_with_evaluation`` whole epochs with their evaluation (``train_seconds``), and ``wall_seconds`` the whole
command. ``--default_run``/``--hour_run`` read a run that already finished instead of training again (the hour row can
be the default run itself when its training fits the hour). ``--real_run_to docs/real-run`` makes the real-run folder
from the default run (its small outputs, ``predictions.npz`` and ``config.json`` included, and an
``explain/run.py --compare`` pass: :data:`COMPARE`). Run it alone on a quiet machine: the times are absolute.

    python bench/recipe_cpu.py --data_dir cifar10-jpeg --work .bench-data/recipe --steps airbench94,default_20,hour
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/recipe_cpu.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common

REPO = Path(__file__).resolve().parents[1]
STEPS = ("profile", "airbench94", "default_20", "hour")
GROUPS = {  # torch.profiler's operator names -> what a training step spends its time on
    "convolution backward": ("convolution_backward",),
    "convolution forward": ("mkldnn_convolution", "convolution", "conv2d"),
    "batch norm (forward + backward)": ("batch_norm",),
    "ReLU (forward + backward)": ("threshold_backward", "clamp_min", "relu"),
    "residual adds": ("aten::add",),
    "optimizer (fused SGD)": ("_fused_sgd",),
    "copies and casts": ("copy_", "_to_copy"),
}
DEFAULT_FLAGS = ("--trust_images=64",)  # the real run's: trust on 64 images, every other explain output as default
HOUR_FLAGS = ("--epochs=17", "--explain_samples=0")  # ~3,490 s of steps by the default run's epoch times
COVERS = {
    "airbench94": "airbench's own timer: the whitening init and the training epochs (not loading, not evaluation)",
    "default_20": "the training steps of every epoch (summary.json train_step_seconds: no per-epoch evaluation, "
                  "explain or start-up; seconds_with_evaluation adds the per-epoch evaluation)",
    "hour": "the training steps of every epoch (summary.json train_step_seconds: no per-epoch evaluation, explain or "
            "start-up; seconds_with_evaluation adds the per-epoch evaluation)",
}


COMPARE = ("python", "explain/run.py", "--compare=gradcam,gradcampp,layercam", "--explain_samples=0",
           "--label_issues=False", "--wandb_mode=offline")  # and --trust_images (COMPARE_IMAGES)
COMPARE_IMAGES = 64  # the real run's trust sample (--compare_trust_images: fewer for a quick check of the step)


def real_run(run: Path, data: Path, work: Path, dest: Path, images: int = COMPARE_IMAGES) -> list[str]:
    """``docs/real-run/`` from the default run: its small outputs (pictures, JSON, ``metrics.jsonl``,
    ``predictions.npz``, ``config.json``; no checkpoint, no W&B folder) and an ``explain/run.py --compare`` pass over
    its ``best.pt`` (``cam_methods.json``/``.png``, ``explain-summary.json``); the files copied."""
    from bench.run_phases import copy_outputs

    explained = work / "real-run-explain"
    command = [sys.executable, *COMPARE[1:], f"--trust_images={images}", f"--checkpoint={run / 'best.pt'}",
               f"--data_dir={data}", f"--out_dir={explained}"]
    if subprocess.run(command, cwd=REPO).returncode:
        common.fail("real run: explain/run.py --compare failed")
    dest.mkdir(parents=True, exist_ok=True)
    copied = copy_outputs(run, dest)
    for name in ("cam_methods.json", "cam_methods.png"):
        shutil.copyfile(explained / name, dest / name)
    shutil.copyfile(explained / "summary.json", dest / "explain-summary.json")
    return [*copied, "cam_methods.json", "cam_methods.png", "explain-summary.json"]


def run_ours(name: str, flags: list[str], data: Path, work: Path, existing: Path | None) -> dict:
    """Train (or read) one of our runs; its row."""
    command = [sys.executable, "train/run.py", f"--data_dir={data}", *flags]
    wall = None
    if existing is None:
        out = work / name
        if out.exists():
            common.fail(f"{out} already exists: a run never overwrites another (pass --{name.split('_')[0]}_run "
                        f"{out} to read it, or another --work)")
        command.append(f"--out_dir={out}")
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO)
        wall = time.perf_counter() - start
        if done.returncode:
            common.fail(f"{name}: train/run.py exited with status {done.returncode}")
        existing = out
    summary = json.loads((existing / "summary.json").read_text())
    config = json.loads((existing / "config.json").read_text()) if (existing / "config.json").exists() else {}
    return {"acc": summary["test_acc"], "acc_single": summary["test_acc_no_tta"], "seconds": step_seconds(existing),
            "seconds_with_evaluation": summary["train_seconds"], "epochs": summary["epochs"],
            **({"wall_seconds": wall} if wall is not None else {}),  # a run read back keeps the file's earlier wall
            "command": " ".join(["python", *command[1:]]), "run": str(existing), "recipe": config,
            "seconds_cover": COVERS[name]}


def step_seconds(run: Path) -> float:
    """The seconds of a finished run's training steps alone: ``summary.json``'s ``train_step_seconds``, or for a run
    that predates that key, its ``last.pt`` record's ``state.train_seconds`` (``train_seconds`` in ``summary.json``
    is whole epochs, the per-epoch evaluation included)."""
    summary = json.loads((run / "summary.json").read_text())
    if "train_step_seconds" in summary:
        return summary["train_step_seconds"]
    import torch

    return round(float(torch.load(run / "last.pt", weights_only=True, map_location="cpu")["state"]["train_seconds"]),
                 3)


def profile(batch_sizes: list[int], resolutions: list[int], steps: int, batch: int = 128,
            compile_backend: str = "inductor") -> dict:
    """Where a training step's time goes (``torch.profiler``, self CPU time by operator group, at batch 128 and full
    size), training images/s at each batch size and resolution (bf16 autocast and channels-last where native, as
    ``train/run.py``; fused SGD; random pixels: the cost does not depend on them), and ``torch.compile``'s images/s
    (``compile_backend``; ``"none"`` skips it) at batch 128 per resolution with its first (compiling) step's
    seconds."""
    import timm
    import torch
    from torch import nn
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import train  # noqa: F401  (registers resnet18_cifar)
    from train.engine import amp_dtype, make_optimizer

    cpu = torch.device("cpu")
    amp = amp_dtype("auto", cpu)
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr=0.1, weight_decay=5e-4, momentum=0.9, device=cpu)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(batch: int, size: int, net: nn.Module = model) -> None:
        images = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(net(images), torch.randint(0, 10, (batch,)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    speed = {}
    for size_of_batch in batch_sizes:
        for size in resolutions:
            step(size_of_batch, size)  # warm-up: oneDNN picks its kernels for the shape
            start = time.perf_counter()
            for _ in range(steps):
                step(size_of_batch, size)
            name = f"batch{size_of_batch}_res{size}"
            speed[name] = steps * size_of_batch / (time.perf_counter() - start)
            print(f"  batch {size_of_batch}, {size}x{size}: {speed[name]:.0f} img/s", flush=True)
    # torch.compile at the profiled batch, every resolution (a shape each: static graphs, one compile each)
    compiled, compile_seconds = {}, {}
    compiled_net = torch.compile(model, dynamic=False, backend=compile_backend) if compile_backend != "none" else None
    for size in resolutions if compiled_net is not None else []:
        start = time.perf_counter()
        step(batch, size, compiled_net)  # compiles this shape
        compile_seconds[f"res{size}"] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            step(batch, size, compiled_net)
        compiled[f"batch{batch}_res{size}"] = steps * batch / (time.perf_counter() - start)
        print(f"  compiled, batch {batch}, {size}x{size}: {compiled[f'batch{batch}_res{size}']:.0f} img/s (first "
              f"step {compile_seconds[f'res{size}']:.0f} s)", flush=True)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step(batch, 32)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    shares = dict.fromkeys([*GROUPS, "other"], 0.0)
    for key, spent in events:  # each operator counted once, in the first group that names it
        group = next((g for g, names in GROUPS.items() if any(name in key for name in names)), "other")
        shares[group] += spent / total
    top = sorted(events, key=lambda e: -e[1])[:12]
    return {"precision": "bf16 autocast" if amp else "fp32", "images_per_second": speed, "steps": steps,
            "compile_backend": compile_backend, "compiled_images_per_second": compiled,
            "compile_first_step_seconds": compile_seconds,
            "profiled_batch": batch, "time_shares_res32": shares,
            "top_ops_res32": [{"op": key, "share": t / total} for key, t in top]}


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data_dir", type=common.folder("train", "test"), default="cifar10-jpeg",
                        help="image-folder root of the data (the JPEG CIFAR-10 copy)")
    parser.add_argument("--work", type=common.out_folder, default=REPO / ".bench-data" / "recipe",
                        help="where airbench's copy of the data and our runs go (made where absent; the default "
                             "is not checked as a given one is, so a fresh clone without .bench-data/ runs)")
    parser.add_argument("--steps", type=common.choices(STEPS), default=",".join(STEPS))
    parser.add_argument("--airbench_seeds", type=common.ints(minimum=0), default="0")
    parser.add_argument("--batch_sizes", type=common.ints(minimum=1), default="64,128,256,512",
                        help="batch sizes the profile step times")
    parser.add_argument("--resolutions", type=common.ints(minimum=8), default="16,20,24,28,32",
                        help="training resolutions the profile step times")
    parser.add_argument("--profile_steps", type=common.count(1), default=6, help="timed steps per configuration")
    parser.add_argument("--profile_batch", type=common.count(1), default=128,
                        help="the batch torch.profiler and torch.compile are measured at")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile's backend in the profile step (inductor; eager or aot_eager for a quick "
                             "check), none: skip it")
    parser.add_argument("--default_run", type=common.folder("summary.json"), default=None,
                        help="a finished default run to read instead of training one")
    parser.add_argument("--compare_trust_images", type=common.count(2), default=COMPARE_IMAGES,
                        help="images of --real_run_to's explain/run.py --compare pass")
    parser.add_argument("--hour_run", type=common.folder("summary.json"), default=None,
                        help="a finished one-hour run to read instead of training one")
    parser.add_argument("--real_run_to", type=common.out_folder, default=None,
                        help="make docs/real-run/ (or this folder) from the default run: its small outputs and an "
                             "explain/run.py --compare pass")
    parser.add_json(REPO / "bench" / "results" / "recipe_cpu.json")
    args = parser.parse(argv)
    if "profile" in args.steps:
        common.check_compile_backend(parser, args.compile_backend)
    data, work = args.data_dir.resolve(), args.work.resolve()
    if set(args.steps) - {"profile"}:
        work.mkdir(parents=True, exist_ok=True)
    results = common.Results(args.json, common.machine("cpu"))
    result = {**common.machine("cpu"), **common.stamp("bench/recipe_cpu.py", argv)}
    measured = False
    for step in args.steps:
        if step == "profile":
            result["profile"] = profile(args.batch_sizes, args.resolutions, args.profile_steps, args.profile_batch,
                                        args.compile_backend)
        elif step == "airbench94":
            from bench.cifar_sets import to_airbench

            folder = work / "airbench"
            if not (folder / "cifar10" / "test.pt").exists():
                to_airbench(data, folder)
            out = work / "airbench94.json"
            done = subprocess.run([sys.executable, "bench/airbench94.py", f"--data={folder}", "--device=cpu",
                                   f"--seeds={','.join(map(str, args.airbench_seeds))}", f"--json={out}"], cwd=REPO)
            if done.returncode:
                common.fail(f"airbench94: bench/airbench94.py exited with status {done.returncode}")
            peer = json.loads(out.read_text())
            result["airbench94"] = {key: peer[key] for key in ("acc", "acc_flip", "acc_single", "seconds", "seeds")}
            result["airbench94"]["seconds_cover"] = COVERS["airbench94"]
        elif step == "default_20":
            result["default_20"] = run_ours(step, list(DEFAULT_FLAGS), data, work, args.default_run)
            if args.real_run_to is not None:
                images = args.compare_trust_images
                files = real_run(Path(result["default_20"]["run"]), data, work, args.real_run_to, images)
                result["default_20"]["real_run"] = {"to": str(args.real_run_to), "files": files,
                                                    "compare": " ".join([*COMPARE, f"--trust_images={images}"])}
        else:
            result["hour"] = run_ours(step, list(HOUR_FLAGS), data, work, args.hour_run)
        measured = True
        results.write(result)
        shown = {k: v for k, v in result[step].items() if k not in ("recipe", "top_ops_res32")}
        print(f"{step}: {json.dumps(shown)}", flush=True)
    return results.finish(result, measured=measured)


if __name__ == "__main__":
    common.entry(main)
