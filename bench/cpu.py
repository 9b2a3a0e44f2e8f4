"""Images/s on this CPU: fp32 and bf16 autocast, NCHW and channels-last, eager and torch.compile, beside the way a
typical tutorial trains, all measured side by side in one process.

The model is ``resnet18_cifar`` (random weights: the cost does not depend on them), the images the real CIFAR-10
images of ``--data_dir`` (decoded once by :func:`train.data.load_data`, its cache after that). What is timed:

* **train** — ``train/run.py``'s step: :class:`train.loader.DeviceLoader` (the uint8 images cropped and flipped in
  batches), the fused SGD of :func:`train.engine.make_optimizer`, :func:`train.engine.train_one_epoch`; for each of
  {fp32, bf16 autocast} x {NCHW, channels-last} x {eager, ``torch.compile`` (``--compile_backend``)}, batch
  ``--batch_size``, ``--steps`` steps a round (``--compile_steps`` compiled: each config's compilation costs minutes
  on two cores, its steps the same as eager's);
* **eval** — :func:`train.engine.predict` under ``torch.inference_mode`` at ``--eval_batch_size``, the same four
  precision/layout pairs, eager;
* **cam** — the explain step's CAM pass, :func:`explain.cam.compute_cams` (Grad-CAM on ``layer4``) of
  ``--cam_images`` test images, the four pairs: ``compute_cams`` runs the model in its parameters' dtype, so bf16
  means the caller's autocast around it (as for training), channels-last a channels-last model; each config's maps
  are compared with fp32 NCHW's (``cam_max_abs_diff``, maps in [0, 1]);
* **tutorial** — the usual tutorial: ``torchvision.datasets.ImageFolder`` on ``--data_dir``'s ``train/`` (or
  ``CIFAR10`` for the python batches) with ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
  ``Normalize``, a ``DataLoader(batch_size=256, shuffle=True, num_workers=2)``, plain ``torch.optim.SGD``, fp32,
  NCHW, eager, ``running_loss += loss.item()`` every step; as many images a round as the eager configs.

Each measure has a warm-up (``--warmup`` steps or batches, as the timed ones), then ``--rounds`` rounds, the
configurations taking turns within each round (a burst of load elsewhere hits them alike; the tutorial's rounds run
back to back, its worker processes would otherwise prefetch between them); the best round counts, every round is in
``all_rounds``. A compiled config's warm-up includes its compilation: ``compile_seconds`` is that warm-up less the
same steps at the measured speed. It is a cold compile (inductor's cache is a fresh folder; a second
``train/run.py --compile`` of the same shapes would find its kernels cached). ``end_to_end`` is what compiling is
worth on a run of ``--end_to_end_images`` images, derived, not timed: compile time + the images at the compiled speed
against the images at the eager speed; ``breakeven_images``, the run from which compiling wins (None: never, it is
not faster). ``ratios`` against the tutorial and against fp32 NCHW eager.

Written to ``--json`` (``bench/results/cpu.json``) through :class:`bench.common.Results`: merged into the file of an
earlier run on the same CPU, torch and threads, never replaced by less. The full run takes about 9-11 minutes on the
idle 2-core development machine, about 3 of them compiling (~50 s of CPU time per config)::

    python bench/cpu.py --data_dir cifar10-jpeg
    python bench/cpu.py --data_dir DIR --batch_size 16 --eval_batch_size 32 --steps 1 --compile_steps 1 --rounds 1 \\
        --cam_images 8 --compile_backend eager                                              # a smoke test, seconds
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # `python bench/cpu.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch
from torch import nn

import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from explain.cam import compute_cams
from train.data import CIFAR_FOLDER, DataError, Dataset, load_data
from train.engine import cpu_bf16_native, make_optimizer, predict, train_one_epoch
from train.loader import DeviceLoader
from train.model import CIFAR10_MEAN, CIFAR10_STD

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
PAIRS = [(precision, layout) for precision in ("fp32", "bf16") for layout in ("nchw", "channels_last")]
BASE = "fp32_nchw"  # what the ratios divide by (with the tutorial)


def amp(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


def fresh_model(channels_last: bool, classes: int) -> nn.Module:
    """A seeded ``resnet18_cifar``: the same weights for every configuration."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=classes)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def cycled(dataset: Dataset, count: int) -> Dataset:
    """``count`` images of ``dataset``, from its start, going round again when it has fewer."""
    return dataset.subset(torch.arange(count) % len(dataset))


class Trainer:
    """One training configuration: its model, fused SGD and two loaders (the warm-up's and a round's batches)."""

    def __init__(self, images: Dataset, precision: str, layout: str, backend: str | None, batch: int, steps: int,
                 warmup: int):
        self.amp, self.channels_last = amp(precision), layout == "channels_last"
        self.model = fresh_model(self.channels_last, len(images.classes))
        self.optimizer = make_optimizer(self.model, lr=0.01, weight_decay=5e-4, momentum=0.9, device=CPU)
        self.net = torch.compile(self.model, backend=backend) if backend else self.model
        self.warm = DeviceLoader(cycled(images, warmup * batch), batch, CPU, train=True, seed=0)
        self.timed = DeviceLoader(cycled(images, steps * batch), batch, CPU, train=True, seed=1)

    def epoch(self, loader: DeviceLoader) -> dict[str, float]:
        return train_one_epoch(self.net, loader, self.optimizer, None, nn.CrossEntropyLoss(), device=CPU, amp=self.amp,
                               channels_last=self.channels_last)


def best(rounds: list[float]) -> float:
    return max(rounds)


def interleaved(jobs: dict[str, Callable[[], float]], rounds: int, what: str) -> dict[str, list[float]]:
    """``rounds`` rounds of every job (each returns images/s), the jobs taking turns within a round."""
    figures: dict[str, list[float]] = {name: [] for name in jobs}
    for index in range(rounds):
        for name, job in jobs.items():
            figures[name].append(job())
        print(f"  {what} round {index + 1}/{rounds}: " + ", ".join(f"{name} {values[-1]:.1f}"
                                                                   for name, values in figures.items()), flush=True)
    return figures


def time_train(images: Dataset, args) -> tuple[dict[str, list[float]], dict[str, float], dict[str, str]]:
    """The training configurations' images/s per round, the compiled ones' compile seconds, and any failures."""
    backends = [None] + ([args.compile_backend] if args.compile_backend != "none" else [])
    trainers, warm_seconds, errors = {}, {}, {}
    for (precision, layout), backend in itertools.product(PAIRS, backends):
        name = f"{precision}_{layout}_{'compiled' if backend else 'eager'}"
        steps = args.compile_steps if backend else args.steps
        try:
            trainer = Trainer(images, precision, layout, backend, args.batch_size, steps, args.warmup)
            warm_seconds[name] = trainer.epoch(trainer.warm)["seconds"]  # a compiled config compiles here
        except Exception as exc:  # one config failing (a compiler missing, say) must not cost the others
            errors[name] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            print(f"  train {name}: failed ({errors[name]})", flush=True)
            continue
        trainers[name] = trainer
        print(f"  train {name}: warm-up {warm_seconds[name]:.1f}s", flush=True)
    figures = interleaved({name: lambda t=t: t.epoch(t.timed)["images_per_second"] for name, t in trainers.items()},
                          args.rounds, "train")
    compile_seconds = {name: max(warm_seconds[name] - args.warmup * args.batch_size / best(figures[name]), 0.0)
                       for name in figures if name.endswith("_compiled")}
    return figures, compile_seconds, errors


def time_eval(images: Dataset, args, classes: int) -> dict[str, list[float]]:
    """Evaluation images/s per round of the four precision/layout pairs, eager."""
    warm = DeviceLoader(cycled(images, args.warmup * args.eval_batch_size), args.eval_batch_size, CPU, train=False)
    timed = DeviceLoader(cycled(images, args.eval_steps * args.eval_batch_size), args.eval_batch_size, CPU,
                         train=False)
    models = {layout: fresh_model(layout == "channels_last", classes).eval() for layout in ("nchw", "channels_last")}

    def run(precision: str, layout: str, loader: DeviceLoader) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            predict(models[layout], loader, amp=amp(precision), channels_last=layout == "channels_last")
        return len(loader.labels) / (time.perf_counter() - start)

    for precision, layout in PAIRS:
        run(precision, layout, warm)
    return interleaved({f"{p}_{layout}": lambda p=p, layout=layout: run(p, layout, timed) for p, layout in PAIRS},
                       args.rounds, "eval")


def time_cams(images: Dataset, args) -> tuple[dict[str, list[float]], dict[str, float]]:
    """CAM images/s per round of the four pairs, and each pair's largest difference from fp32 NCHW's maps."""
    chosen = cycled(images, args.cam_images)
    models = {layout: fresh_model(layout == "channels_last", len(images.classes)).eval()
              for layout in ("nchw", "channels_last")}
    maps: dict[str, torch.Tensor] = {}

    def run(precision: str, layout: str, count: int) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            cams = compute_cams(models[layout], chosen.images[:count], chosen.labels[:count], "gradcam", "layer4")
        seconds = time.perf_counter() - start
        maps[f"{precision}_{layout}"] = cams
        return count / seconds

    for precision, layout in PAIRS:  # the warm-up: one pass of the same images
        run(precision, layout, args.cam_images)
    figures = interleaved({f"{p}_{layout}": lambda p=p, layout=layout: run(p, layout, args.cam_images)
                           for p, layout in PAIRS}, args.rounds, "cam")
    return figures, {name: (cams - maps[BASE]).abs().max().item() for name, cams in maps.items()}


def tutorial_batches(root: Path, batch_size: int, workers: int) -> tuple[Iterator, int]:
    """A tutorial's training batches, epoch after epoch (a new shuffled pass, workers restarted, when one ends), and
    the number of classes."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    if (root / "train").is_dir():
        dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    else:  # the python batches: what `torchvision.datasets.CIFAR10(download=True)` leaves
        dataset = datasets.CIFAR10(str(root), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    return itertools.chain.from_iterable(iter(loader) for _ in itertools.count()), len(dataset.classes)


def time_tutorial(args) -> list[float]:
    """The tutorial's training images/s per round (its rounds back to back, after the warm-up steps)."""
    batches, classes = tutorial_batches(args.data_dir, args.batch_size, args.workers)
    model = fresh_model(False, classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    running_loss = 0.0

    def steps(count: int) -> float:
        nonlocal running_loss
        start, seen = time.perf_counter(), 0
        for _ in range(count):
            inputs, labels = next(batches)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            seen += len(labels)
        return seen / (time.perf_counter() - start)

    steps(args.warmup)
    rounds = []
    for index in range(args.rounds):
        rounds.append(steps(args.steps))
        print(f"  tutorial round {index + 1}/{args.rounds}: {rounds[-1]:.1f}", flush=True)
    return rounds


def end_to_end(images: int, compile_seconds: float, compiled: float, eager: float) -> dict[str, float | None]:
    """What compiling is worth on a run of ``images`` images: both runs' seconds, the compiled run's images/s with
    its compilation, and the run length from which compiling wins (None: never, it is not faster)."""
    seconds = compile_seconds + images / compiled
    return {"images": images, "compiled_seconds": seconds, "eager_seconds": images / eager,
            "compiled_images_per_s": images / seconds, "speedup": (images / eager) / seconds,
            "breakeven_images": compile_seconds / (1 / eager - 1 / compiled) if compiled > eager else None}


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data_dir", type=common.folder(hint=" (unpack ../shared/data/cifar10-jpeg.tar.xz)"),
                        default=str(REPO / "cifar10-jpeg"),
                        help="CIFAR-10 as train/ and test/ class folders of images (or the python batches)")
    parser.add_argument("--batch_size", type=common.count(1), default=256, help="training batch (and the tutorial's)")
    parser.add_argument("--steps", type=common.count(1), default=4, help="training steps a round, eager and tutorial")
    parser.add_argument("--compile_steps", type=common.count(1), default=2, help="training steps a round, compiled")
    parser.add_argument("--warmup", type=common.count(1), default=1, help="untimed steps (batches) before the rounds")
    parser.add_argument("--rounds", type=common.count(1), default=3, help="timed rounds; the best one counts")
    parser.add_argument("--eval_batch_size", type=common.count(1), default=1024)
    parser.add_argument("--eval_steps", type=common.count(1), default=1, help="evaluation batches a round")
    parser.add_argument("--cam_images", type=common.count(1), default=256, help="images of the CAM pass")
    parser.add_argument("--workers", type=common.count(0), default=2, help="the tutorial's DataLoader workers")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile's backend (inductor; eager or aot_eager for a quick check), none: skip")
    parser.add_argument("--end_to_end_images", type=common.count(1), default=50_000,
                        help="the run length end_to_end judges compiling on (50,000: one CIFAR-10 epoch)")
    parser.add_json(REPO / "bench" / "results" / "cpu.json")
    args = parser.parse(argv)
    common.check_compile_backend(parser, args.compile_backend)
    if not (args.data_dir / "train").is_dir() and not (args.data_dir / CIFAR_FOLDER).is_dir():
        parser.error(f"--data_dir {str(args.data_dir)!r} has no train/ class folders nor {CIFAR_FOLDER}/")
    results = common.Results(args.json, common.machine(CPU), depth=3)
    try:
        train_set, test_set = load_data(args.data_dir, download=False)
    except DataError as exc:
        common.fail(str(exc))
    about = common.machine(CPU)
    print(f"{about['cpu']}, {about['cores']} cores, {about['threads']} threads, torch {about['torch']}, "
          f"native bf16: {cpu_bf16_native()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-cpu-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, not one read from an earlier run's cache
        train_rounds, compile_seconds, errors = time_train(train_set, args)
    eval_rounds = time_eval(test_set, args, len(test_set.classes))
    cam_rounds, cam_diff = time_cams(test_set, args)
    tutorial_rounds = time_tutorial(args)

    train_ips = {name: best(values) for name, values in train_rounds.items()}
    eval_ips = {name: best(values) for name, values in eval_rounds.items()}
    cam_ips = {name: best(values) for name, values in cam_rounds.items()}
    tutorial = best(tutorial_rounds)
    base = train_ips.get(f"{BASE}_eager")
    result = {
        **about, "bf16_native": cpu_bf16_native(), "data": str(args.data_dir),
        "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size, "cam_images": args.cam_images,
        "steps": args.steps, "compile_steps": args.compile_steps, "warmup": args.warmup, "rounds": args.rounds,
        "compile_backend": args.compile_backend, "train": train_ips, "eval": eval_ips, "cam": cam_ips,
        "cam_max_abs_diff": cam_diff, "tutorial_images_per_s": tutorial,
        "ratios": {
            "train_vs_tutorial": {name: ips / tutorial for name, ips in train_ips.items()},
            "train_vs_fp32_nchw_eager": {name: ips / base for name, ips in train_ips.items()} if base else {},
            "tutorial_vs_fp32_nchw_eager": tutorial / base if base else None,
            "eval_vs_fp32_nchw": {name: ips / eval_ips[BASE] for name, ips in eval_ips.items()},
            "cam_vs_fp32_nchw": {name: ips / cam_ips[BASE] for name, ips in cam_ips.items()},
        },
        "compile_seconds": compile_seconds,
        "end_to_end": {name: end_to_end(args.end_to_end_images, seconds, train_ips[name], train_ips[eager])
                       for name, seconds in compile_seconds.items()
                       if (eager := name.replace("_compiled", "_eager")) in train_ips},
        "all_rounds": {"train": train_rounds, "eval": eval_rounds, "cam": cam_rounds, "tutorial": tutorial_rounds},
        "errors": errors, **common.stamp("bench/cpu.py", argv),
    }
    print(f"tutorial (ImageFolder + DataLoader x{args.workers}, fp32 NCHW eager): {tutorial:.1f} images/s")
    for name, ips in train_ips.items():
        print(f"train {name:28s} {ips:7.1f} images/s  {ips / tutorial:5.2f}x the tutorial"
              + (f"  {ips / base:5.2f}x fp32 NCHW eager" if base else "")
              + (f"  (compiling {compile_seconds[name]:.0f}s)" if name in compile_seconds else ""))
    for what, figures in (("eval", eval_ips), ("cam", cam_ips)):
        for name, ips in figures.items():
            print(f"{what:5s} {name:28s} {ips:7.1f} images/s  {ips / figures[BASE]:5.2f}x fp32 NCHW")
    return results.finish(result, measured=bool(train_ips), why="every training configuration failed")


if __name__ == "__main__":
    common.entry(main)
