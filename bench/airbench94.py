"""The peer on the same images: airbench94 (PyPI ``airbench`` 0.1.8, 94 % on the original CIFAR-10 in a few seconds
of an A100), ported so that it also runs on the CPU, trained on our data per seed, with its own test-time
augmentation.

airbench's ``train94`` hard-codes CUDA (``net.half().cuda()``, CUDA events), so this script runs the same method
built from airbench's own parts: its network classes (``Conv``, ``ConvGroup``, ``BatchNorm``, ``Flatten``, ``Mul``)
and hyperparameters (``lib_airbench94.hyp``), its ``CifarLoader`` (alternating flip, translate 2), whitening init
(``init_whitening_conv``), ``LookaheadState`` and ``evaluate``; the training loop below is ``airbench.utils.train``'s
(decoupled lr and weight decay, 64× lr on BatchNorm biases, the triangular schedule from 0.2 to 0.07 peaking at 23 %,
lookahead every 5 steps with its cubic schedule, whitening bias trained for 3 epochs, 9.9 epochs of batch 1024,
label smoothing 0.2), with the device a parameter. On CUDA the network is fp16 with fp32 BatchNorm, as airbench
builds it; on the CPU it is fp32 under bf16 autocast (airbench's fp16 is slow or absent there) and channels-last.
Seconds cover what airbench's own timer covers: the whitening init and the training epochs, not the data loading or
the final evaluation. Every generator is seeded per seed (airbench itself does not seed).

``--data`` is a folder holding ``cifar10/{train,test}.pt`` in airbench's format (``bench/cifar_sets.py`` converts the
JPEG copy). Reported per seed: ``acc`` (``tta_level=2``: mirror + translate, airbench's figure), ``acc_flip``
(``tta_level=1``) and ``acc_single`` (``tta_level=0``)::

    python bench/airbench94.py --data W/airbench --seeds 0 --json out.json        # the CPU: ~8 minutes a seed
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/airbench94.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common

HINT = " (python bench/cifar_sets.py makes them)"


def make_net(device, half: bool):
    """airbench94's network (``lib_airbench94.make_net94``) on ``device``: fp16 with fp32 BatchNorm when ``half``
    (airbench's CUDA build), else fp32; channels-last either way; the whitening conv's weights frozen."""
    import torch
    from airbench.lib_airbench94 import BatchNorm, Conv, ConvGroup, Flatten, Mul, hyp
    from torch import nn

    widths, momentum = hyp["net"]["widths"], hyp["net"]["batchnorm_momentum"]
    whiten_kernel_size = 2
    whiten_width = 2 * 3 * whiten_kernel_size**2
    net = nn.Sequential(
        Conv(3, whiten_width, whiten_kernel_size, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(whiten_width, widths["block1"], momentum),
        ConvGroup(widths["block1"], widths["block2"], momentum),
        ConvGroup(widths["block2"], widths["block3"], momentum),
        nn.MaxPool2d(3),
        Flatten(),
        nn.Linear(widths["block3"], 10, bias=False),
        Mul(hyp["net"]["scaling_factor"]),
    )
    net[0].weight.requires_grad = False
    net = (net.half() if half else net).to(device).to(memory_format=torch.channels_last)
    for module in net.modules():
        if isinstance(module, BatchNorm):
            module.float()
    return net


def train94(train_loader, device, amp) -> tuple[object, float]:
    """airbench's ``train`` with ``train94``'s hyperparameters on ``device``; the model and the seconds its own
    timer covers (whitening init + training)."""
    import numpy
    import torch
    from airbench.lib_airbench94 import hyp
    from airbench.utils import LookaheadState, init_whitening_conv
    from torch import nn

    opt = hyp["opt"]
    epochs, momentum, batch_size = opt["train_epochs"], opt["momentum"], train_loader.batch_size
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))  # airbench's decoupled lr and weight decay
    lr = opt["lr"] / kilostep_scale
    wd = opt["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * opt["bias_scaler"]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=opt["label_smoothing"], reduction="none")
    total_steps = math.ceil(len(train_loader) * epochs)
    model = make_net(device, half=amp is None)
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                 dict(params=others, lr=lr, weight_decay=wd / lr)], momentum=momentum, nesterov=True)
    # airbench's triangle(total_steps, start=0.2, end=0.07, peak=0.23), as np.interp over the step index
    peak = int(0.23 * total_steps)
    schedule = numpy.interp(range(total_steps + 1), [0, peak, total_steps], [0.2, 1.0, 0.07]).tolist()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule[i])
    alpha = 0.95**5 * (torch.arange(total_steps + 1) / total_steps) ** 3
    lookahead = LookaheadState(model)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    init_whitening_conv(model[0], train_loader.normalize(train_loader.images[:5000]))
    steps = 0
    for epoch in range(math.ceil(epochs)):
        model[0].bias.requires_grad = epoch < opt["whiten_bias_epochs"]
        model.train()
        for inputs, labels in train_loader:
            if amp is not None:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float16, enabled=amp is not None):
                outputs = model(inputs)
            loss = loss_fn(outputs.float(), labels).sum()  # summed over 1,024 images: in fp32, not bf16
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
            if steps % 5 == 0:
                lookahead.update(model, decay=alpha[steps].item())
            if steps >= total_steps:
                lookahead.update(model, decay=1.0)
                break
    sync()
    return model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data", required=True, type=common.folder("cifar10/train.pt", "cifar10/test.pt", hint=HINT),
                        help="the folder holding cifar10/train.pt and cifar10/test.pt")
    parser.add_argument("--seeds", type=common.ints(minimum=0), default="0", help="comma-separated seeds, one run each")
    parser.add_argument("--device", type=common.device, default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_json(None)
    args = parser.parse(argv)
    data, device = args.data.resolve(), args.device
    try:
        import airbench
        from airbench.lib_airbench94 import hyp
    except ImportError:
        common.fail("airbench is not installed (pip install airbench==0.1.8)")
    import torch

    from train.engine import amp_dtype

    results = common.Results(args.json, common.machine(device))
    amp = amp_dtype("auto", device) if device.type == "cpu" else None  # CUDA: airbench's own fp16 network

    def loaders():
        where = str(data / "cifar10")
        train = airbench.CifarLoader(where, train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                                     altflip=True, gpu=device)
        test = airbench.CifarLoader(where, train=False, batch_size=2000, gpu=device)
        if device.type == "cpu":  # airbench stores fp16 images for its fp16 network; fp32 here, bf16 under autocast
            train.images, test.images = train.images.float(), test.images.float()
        return train, test

    def evaluate(model, loader, level: int) -> float:
        with torch.autocast(device.type, dtype=amp or torch.float16, enabled=amp is not None):
            return airbench.evaluate(model, loader, tta_level=level)

    batch = hyp["opt"]["batch_size"]
    if len(torch.load(data / "cifar10" / "train.pt", weights_only=True)["labels"]) < batch:
        common.fail(f"--data {str(args.data)!r}: airbench94 needs at least {batch:,} training images (one batch)")

    def one_seed(seed: int) -> dict:
        train_loader, test_loader = loaders()
        model, seconds = train94(train_loader, device, amp)
        accs = {name: evaluate(model, test_loader, level) for name, level in
                (("acc", 2), ("acc_flip", 1), ("acc_single", 0))}
        print(f"  airbench94 seed {seed}: {accs['acc']:.4f} (tta_level=2), {accs['acc_flip']:.4f} (flip), "
              f"{accs['acc_single']:.4f} (single) in {seconds:.1f}s", flush=True)
        return {"seed": seed, **accs, "seconds": seconds, "train_images": len(train_loader.labels),
                "test_images": len(test_loader.labels)}

    runs = common.per_seed(args.seeds, one_seed)
    result = {
        **common.machine(device), "airbench": "0.1.8", "precision": "bf16 autocast" if amp else "fp16 (airbench's)",
        "train_images": runs[0]["train_images"] if runs else 0, "test_images": runs[0]["test_images"] if runs else 0,
        "seeds": args.seeds, "acc": [r["acc"] for r in runs], "acc_flip": [r["acc_flip"] for r in runs],
        "acc_single": [r["acc_single"] for r in runs], "seconds": [r["seconds"] for r in runs],
        "seconds_cover": "airbench's own timer: the whitening init and the training epochs (not data loading, not "
                         "the final evaluation)",
        **common.stamp("bench/airbench94.py", argv),
    }
    return results.finish(result, measured=bool(runs))


if __name__ == "__main__":
    common.entry(main)
