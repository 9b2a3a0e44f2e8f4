"""Training throughput: our device-resident loader + step vs a standard torchvision DataLoader pipeline.

Both train the same model (``resnet18_cifar``) on the same images in one process on one device, side by side:

* **ours** — :class:`train.loader.DeviceLoader` (uint8 on the device, batched crop/flip there), the fused SGD of
  :func:`train.engine.make_optimizer` and :func:`train.engine.train_one_epoch` with the precision and layout
  ``train/run.py`` picks (bf16 autocast on CUDA and on a CPU that runs bf16 natively, channels-last on both;
  ``bench/cpu.py`` times each combination on the CPU);
* **baseline** — ``torchvision.datasets.ImageFolder`` + PIL ``RandomCrop(32, 4)``, ``RandomHorizontalFlip``,
  ``ToTensor`` in a ``DataLoader`` with worker processes, fp32, the way most CIFAR tutorials train.

Prints images/s of both, the ratio, and the model FLOPs utilization when the device's peak is known; writes JSON.
Imports only the data, model and engine modules (no wandb, no torchcam), so it runs on a stock PyTorch image.

    python bench/speed.py --data_dir .bench-data/cifar10-jpeg --images 2048         # this 2-core CPU
    python bench/speed.py --data_dir .bench-data/cifar10-jpeg --images 50000 --epochs 3 --compile --workers 16  # a GPU
    python bench/speed.py --data_dir DIR --batch_sizes 512,1024 --compile_modes default,reduce-overhead --no_baseline

With several batch sizes and compile modes each combination is timed (``throughput``: ``eager_bs512``,
``compile-default_bs512``, ...), with its MFU and, compiled, the graphs, recompilations and graph breaks it caused.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/speed.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from train.data import DataError, balanced_subset, load_data
from train.engine import amp_dtype, make_optimizer, train_one_epoch, use_channels_last
from train.loader import DeviceLoader

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def jpeg_root(data_dir: str | None) -> Path:
    """The JPEG CIFAR-10 folder: the given one, or the shared archive unpacked once into .bench-data/."""
    if data_dir:
        return Path(data_dir)
    root = REPO / ".bench-data"
    if not (root / "cifar10-jpeg").is_dir():
        root.mkdir(exist_ok=True)
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(root, filter="data")
    return root / "cifar10-jpeg"


def flops_per_image(model: nn.Module, device: torch.device) -> float:
    """Forward + backward FLOPs of one image, counted by PyTorch's FlopCounterMode on a batch of 8."""
    x = torch.rand(8, 3, 32, 32, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 8


def bench_ours(model, dataset, args, device, *, compile: bool = False, mode: str | None = None) -> dict:
    loader = DeviceLoader(dataset, args.batch_size, device, train=True, seed=0)
    optimizer = make_optimizer(model, lr=0.01, weight_decay=5e-4, momentum=0.9, device=device)  # fused
    amp, channels_last = amp_dtype("auto", device), use_channels_last(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, mode=mode) if compile else model
    runs = [train_one_epoch(net, loader, optimizer, None, nn.CrossEntropyLoss(), device=device, amp=amp,
                            channels_last=channels_last) for _ in range(args.epochs + 1)]
    timed = runs[1:]  # the first epoch warms up kernels and allocators (and compiles)
    return {"images_per_second": sum(r["images"] for r in timed) / sum(r["seconds"] for r in timed),
            "precision": "bf16" if amp else "fp32", "channels_last": channels_last, "compile": compile, "mode": mode,
            "first_epoch_seconds": runs[0]["seconds"]}


def bench_baseline(model, root: Path, indices: torch.Tensor, args, device) -> dict:
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor()])
    folder = torch.utils.data.Subset(datasets.ImageFolder(str(root / "train"), transform=transform), indices.tolist())
    loader = torch.utils.data.DataLoader(folder, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    seconds, images = 0.0, 0
    for epoch in range(args.epochs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        count = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += len(y)
        loss.item()  # one sync at the end, as ours does
        if epoch:  # the first epoch warms up workers and kernels
            seconds += time.perf_counter() - start
            images += count
    return {"images_per_second": images / seconds, "precision": "fp32", "workers": args.workers}


def compile_counters() -> dict[str, int]:
    """torch.compile's running counts: graphs compiled, recompilations and graph breaks (why compiled code can be
    slower than eager: a break splits the model, a recompile means a guard failed)."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]), "recompiles": int(counters["stats"].get(
        "recompiles", 0)), "graph_breaks": int(sum(counters["graph_break"].values()))}


def bench_variant(model: nn.Module, dataset, args, device, batch_size: int, mode: str | None) -> dict:
    """:func:`bench_ours` at ``batch_size``, eager (``mode`` None) or under ``torch.compile(mode=...)``."""
    torch._dynamo.reset()  # each variant compiles afresh (the code cache is shared by the whole process)
    before = compile_counters() if mode else None
    try:
        run = bench_ours(model, dataset, argparse.Namespace(**{**vars(args), "batch_size": batch_size}), device,
                         compile=mode is not None, mode=None if mode in (None, "default") else mode)
    except Exception as exc:  # one variant failing (a CUDA-graph mode, say) must not cost the others' figures
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    if mode:
        after = compile_counters()
        run["compile_counters"] = {key: after[key] - before[key] for key in after}
    return run


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data_dir", type=common.folder("train"),
                        help="JPEG CIFAR-10 folder (default: unpack ../shared/data's archive)")
    parser.add_argument("--images", type=common.count(1), default=50000,
                        help="training images per epoch (class-balanced)")
    parser.add_argument("--epochs", type=common.count(1), default=1, help="timed epochs after one warm-up epoch")
    parser.add_argument("--batch_size", "--batch_sizes", dest="batch_sizes", type=common.ints(minimum=1),
                        default="512", help="comma-separated batch sizes, each timed (the first one is the baseline's)")
    parser.add_argument("--workers", type=common.count(0), default=2,
                        help="DataLoader worker processes of the baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", dest="compile_modes", action="store_const", const="default",
                        help="also time ours under torch.compile (= --compile_modes default)")
    parser.add_argument("--compile_modes", default="",
                        help="comma-separated torch.compile modes to time (default, reduce-overhead, max-autotune)")
    parser.add_argument("--no_baseline", dest="baseline", action="store_false",
                        help="skip the torchvision DataLoader baseline")
    parser.add_json(REPO / "bench" / "out" / "speed.json")
    args = parser.parse(argv)
    batch_sizes = args.batch_sizes
    modes = [m for m in args.compile_modes.split(",") if m]
    if unknown := [m for m in modes if m != "default" and m not in torch._inductor.list_mode_options()]:
        parser.error(f"--compile_modes has unknown mode(s) {', '.join(unknown)}")
    if args.images < max(batch_sizes):
        parser.error(f"--images {args.images} is fewer than a batch of --batch_sizes {max(batch_sizes)}")
    if args.data_dir is None and not (REPO / ".bench-data" / "cifar10-jpeg").is_dir() and not ARCHIVE.is_file():
        parser.error(f"no --data_dir given, and {ARCHIVE} is not there to unpack")
    device = common.device(args.device)
    results = common.Results(args.json, common.machine(device))

    torch.backends.cudnn.benchmark = True  # as train/run.py
    root = jpeg_root(args.data_dir)
    try:
        train_set, _ = load_data(root)
    except DataError as exc:
        common.fail(str(exc))
    indices = balanced_subset(train_set.labels, args.images, seed=0)
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10).to(device)
    flops = flops_per_image(model, device)
    name = common.machine(device)["device"]
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    runs = {}
    for batch_size in batch_sizes:
        for mode in [None, *modes]:
            key = f"{'eager' if mode is None else f'compile-{mode}'}_bs{batch_size}"
            run = runs[key] = bench_variant(model, train_set.subset(indices), args, device, batch_size, mode)
            if "error" in run:
                print(f"  {key}: failed ({run['error']})", flush=True)
                continue
            run["mfu"] = run["images_per_second"] * flops / (peak * 1e12) if peak else None
            print(f"  {key}: {run['images_per_second']:.1f} img/s"
                  + (f", MFU {run['mfu']:.1%}" if peak else "") + f"; first epoch {run['first_epoch_seconds']:.1f}s"
                  + (f"; {run['compile_counters']}" if mode else ""), flush=True)
    first = batch_sizes[0]
    ours = runs[f"eager_bs{first}"]
    if "error" in ours:
        return results.finish({}, measured=False, why=f"eager training at batch {first} failed ({ours['error']})")
    compiled = runs.get(f"compile-{modes[0]}_bs{first}") if modes else None
    compiled = compiled if compiled and "error" not in compiled else None
    args.batch_size = first
    baseline = bench_baseline(model, root, indices, args, device) if args.baseline else None
    result = {
        **common.machine(device), "images": len(indices), "timed_epochs": args.epochs,
        "batch_size": first, "batch_sizes": batch_sizes, "compile_modes": modes,
        "throughput": {key: run["images_per_second"] for key, run in runs.items() if "error" not in run},
        "runs": runs,
        "ours": ours, "ours_compiled": compiled, "baseline": baseline,
        "ratio": ours["images_per_second"] / baseline["images_per_second"] if baseline else None,
        "train_flops_per_image": flops,
        "peak_tflops": peak,
        "mfu": ours["mfu"],
        "mfu_compiled": compiled["mfu"] if compiled else None,
        **common.stamp("bench/speed.py", argv),
    }
    print(f"device {name}: ours {ours['images_per_second']:.1f} img/s ({ours['precision']})"
          + (f", baseline {baseline['images_per_second']:.1f} img/s (fp32, DataLoader x{args.workers} workers): "
             f"ratio {result['ratio']:.2f}x" if baseline else "")
          + f"; {flops / 1e9:.2f} GFLOP per training image"
          + (f"; MFU {result['mfu']:.1%}" if peak else "; MFU n/a (unknown peak)"))
    if compiled:
        print(f"  ours under torch.compile: {compiled['images_per_second']:.1f} img/s "
              f"({compiled['images_per_second'] / ours['images_per_second']:.2f}x eager; first epoch "
              f"{compiled['first_epoch_seconds']:.1f}s incl. compilation)"
              + (f"; MFU {result['mfu_compiled']:.1%}" if peak else ""))
    return results.finish(result, measured=True)


if __name__ == "__main__":
    common.entry(main)
