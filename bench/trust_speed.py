"""Benchmark: the trust figures' time as a multiple of the explain step's CAM time, same images, same process.

    python bench/trust_speed.py                       # a trained-for-nothing model: the cost does not depend on it
    python bench/trust_speed.py --checkpoint runs/NAME/best.pt

What ``explain`` does at the end of a run, timed in parts on the same real CIFAR-10 test images
(``bench/cam_speed.py``'s images): the CAMs of the ``--samples`` most confident mistakes for the predicted and the
true class (:func:`explain.report.cams_for_pred_and_true`: the explain step's CAM time), then the whole trust step
(:func:`explain.report_trust.measure_trust`: its CAMs, deletion/insertion, the randomization test, the bootstrap
intervals and both pictures) on a class-stratified sample of ``--trust_images`` of the images (default: the CPU
default, :data:`explain.report_trust.CPU_TRUST_IMAGES`). ``--repeats`` interleaved runs; the fastest of each part
counts. Writes ``bench/out/trust_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/trust_speed.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

import train  # noqa: F401  (registers resnet18_cifar)
from bench.cam_speed import test_images
from explain.report import cams_for_pred_and_true, find_mistakes
from explain.report_trust import CPU_TRUST_IMAGES, TRUST_STEPS, measure_trust, trust_sample
from train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a best.pt to explain (default: a randomly initialised resnet18_cifar)")
    parser.add_argument("--images", type=int, default=1000, help="test images predicted")
    parser.add_argument("--samples", type=int, default=64, help="mistakes explained (train/run.py's default)")
    parser.add_argument("--trust_images", type=int, default=CPU_TRUST_IMAGES, help="images the trust step uses")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "trust_speed.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10)
    if args.checkpoint:
        model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    model.eval()
    images, labels, source = test_images(args.images)
    with torch.inference_mode():
        probs = torch.cat([model(chunk.float() / 255).softmax(1) for chunk in images.split(256)])
    chosen = find_mistakes(probs, labels, args.samples)
    preds = probs.argmax(1)
    sample = trust_sample(labels, args.trust_images, 0)
    times: dict[str, list[float]] = {"cams": [], "trust": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            start = time.perf_counter()
            cams_for_pred_and_true(model, images[chosen], preds[chosen], labels[chosen])
            times["cams"].append(time.perf_counter() - start)
            start = time.perf_counter()
            measure_trust(model, images[sample], preds[sample], "gradcam", ["layer4"], Path(folder), None)
            times["trust"].append(time.perf_counter() - start)
    best = {part: min(values) for part, values in times.items()}
    trust, k = best["trust"], len(sample)
    result = {
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
        "images": source, "mistakes_explained": len(chosen), "trust_images": k, "steps": TRUST_STEPS,
        "seconds": best,
        "trust_over_cams": trust / best["cams"], "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "bench/trust_speed.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    print(f"explain step CAMs ({len(chosen)} mistakes x 2 classes): {best['cams']:.2f} s\n"
          f"trust step on {k} class-stratified images (CAMs, deletion/insertion, randomization, intervals, "
          f"pictures): {trust:.2f} s\n"
          f"trust / CAMs = {result['trust_over_cams']:.2f}x  (best of {args.repeats}, {source})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
