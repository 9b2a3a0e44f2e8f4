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

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/airbench94.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common

HINT = " (python bench/cifar_sets.py makes them)"


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data", required=True, type=common.folder("cifar10/train.pt", "cifar10/test.pt", hint=HINT),
                        help="the folder holding cifar10/train.pt and cifar10/test.pt")
    parser.add_argument("--seeds", type=common.ints(minimum=0), default="0", help="comma-separated seeds, one run each")
    parser.add_json(None)
    args = parser.parse(argv)
    data, out = args.data.resolve(), args.json.resolve()  # airbench is run inside --data: paths first
    import torch

    if not torch.cuda.is_available():
        common.fail("airbench.train94 needs CUDA, and this machine has none")
    try:
        import airbench
    except ImportError:
        common.fail("airbench is not installed (pip install airbench==0.1.8)")
    results = common.Results(out, common.machine("cuda"))

    os.chdir(data)  # airbench reads cifar10/ relative to the working directory
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    airbench.warmup94(verbose=True)  # one step: cuDNN autotuning, not timed (as airbench's own benchmark)

    def one_seed(seed: int) -> dict:
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = airbench.train94(verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        acc = airbench.evaluate(model, test_loader, tta_level=2)
        print(f"  airbench94 seed {seed}: {acc:.4f} (tta_level=2) in {seconds:.2f}s", flush=True)
        return {"seed": seed, "acc": acc, "acc_no_tta": airbench.evaluate(model, test_loader, tta_level=0),
                "seconds": seconds}

    runs = common.per_seed(args.seeds, one_seed)
    result = {
        **common.machine("cuda"), "airbench": getattr(airbench, "__version__", "0.1.8"),
        "train_images": len(torch.load(data / "cifar10" / "train.pt", weights_only=True)["labels"]),
        "test_images": len(test_loader.labels), "seeds": args.seeds, "acc": [run["acc"] for run in runs],
        "acc_no_tta": [run["acc_no_tta"] for run in runs], "seconds": [run["seconds"] for run in runs],
        **common.stamp("bench/airbench94.py", argv),
    }
    return results.finish(result, measured=bool(runs))


if __name__ == "__main__":
    sys.exit(main())
