"""The peer on the same images: ``airbench.train94`` (PyPI ``airbench`` 0.1.8, 94 % on the original CIFAR-10 in a few
seconds of an A100) trained on our data, per seed, with its own test-time augmentation.

``--data`` is a folder holding ``cifar10/{train,test}.pt`` in airbench's format (``bench/cifar_sets.py`` converts the
JPEG copy): airbench's ``CifarLoader`` reads ``cifar10/`` of the working directory, and ``train94`` builds its test
loader there itself, so the script runs airbench inside ``--data``. One untimed warm-up (``airbench.warmup94``:
cuDNN's autotuning), then per seed ``train94(verbose=False)`` timed with the GPU synchronized, and
``airbench.evaluate(model, test_loader, tta_level=2)`` (its reported figure; ``tta_level=0`` too, as ``acc_no_tta``).
airbench needs CUDA (its network is built in fp16 with ``.cuda()``): without it the script says so and exits 2.

    python bench/airbench94.py --data W/airbench --seeds 0,1,2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the folder holding cifar10/train.pt and cifar10/test.pt")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one run each")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.exit(2, f"error: --seeds {args.seeds!r} is not a comma-separated list of integers\n")
    data, out = Path(args.data).resolve(), Path(args.json).resolve()
    missing = [name for name in ("train.pt", "test.pt") if not (data / "cifar10" / name).is_file()]
    if missing:  # airbench would try to download CIFAR-10 into it instead
        parser.exit(2, f"error: --data {args.data!r} has no cifar10/{' or cifar10/'.join(missing)} "
                       f"(python bench/cifar_sets.py makes them)\n")
    import torch

    if not torch.cuda.is_available():
        parser.exit(2, "error: airbench.train94 needs CUDA, and this machine has none\n")
    try:
        import airbench
    except ImportError:
        parser.exit(2, "error: airbench is not installed (pip install airbench==0.1.8)\n")

    os.chdir(data)  # airbench reads cifar10/ relative to the working directory
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    airbench.warmup94(verbose=True)  # one step: cuDNN autotuning, not timed (as airbench's own benchmark)
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = airbench.train94(verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        acc = airbench.evaluate(model, test_loader, tta_level=2)
        runs.append({"seed": seed, "acc": acc, "acc_no_tta": airbench.evaluate(model, test_loader, tta_level=0),
                     "seconds": seconds})
        print(f"  airbench94 seed {seed}: {acc:.4f} (tta_level=2) in {seconds:.2f}s", flush=True)
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "airbench": getattr(airbench, "__version__", "0.1.8"), "train_images": len(torch.load(
            data / "cifar10" / "train.pt", weights_only=True)["labels"]), "test_images": len(test_loader.labels),
        "seeds": seeds, "acc": [run["acc"] for run in runs], "acc_no_tta": [run["acc_no_tta"] for run in runs],
        "seconds": [run["seconds"] for run in runs], "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "bench/airbench94.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
