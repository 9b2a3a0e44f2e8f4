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

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/trust_speed.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from bench.cam_speed import test_images
from explain.report import cams_for_pred_and_true, find_mistakes
from explain.report_trust import CPU_TRUST_IMAGES, TRUST_STEPS, measure_trust, trust_sample
from train.checkpoint import CheckpointError, load_checkpoint, load_model_state
from train.config import MAX_TRUST_IMAGES

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--checkpoint", type=common.file,
                        help="a best.pt to explain (default: a randomly initialised resnet18_cifar)")
    parser.add_argument("--images", type=common.count(1), default=1000, help="test images predicted")
    parser.add_argument("--samples", type=common.count(1), default=64,
                        help="mistakes explained (train/run.py's default)")
    parser.add_argument("--trust_images", type=common.count(2, MAX_TRUST_IMAGES), default=CPU_TRUST_IMAGES,
                        help="images the trust step uses")
    parser.add_argument("--repeats", type=common.count(1), default=2)
    parser.add_json(REPO / "bench" / "out" / "trust_speed.json")
    args = parser.parse(argv)
    if args.trust_images > args.images:
        parser.error(f"--trust_images {args.trust_images} is more than --images {args.images}")
    from bench.cam_speed import ARCHIVE, DATA

    source = "real" if (DATA / "cifar10-jpeg").is_dir() or ARCHIVE.is_file() else "synthetic"
    results = common.Results(args.json, common.machine("cpu"), replace=args.replace, conditions={
        "image_source": source, "images_predicted": args.images, "samples": args.samples,
        "trust_images": args.trust_images, "checkpoint": str(args.checkpoint) if args.checkpoint else None})
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10)
    if args.checkpoint:
        try:
            load_model_state(model, load_checkpoint(args.checkpoint), str(args.checkpoint))
        except CheckpointError as exc:
            common.fail(str(exc))
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
        **common.machine("cpu"), "images": source, "mistakes_explained": len(chosen), "trust_images": k,
        "steps": TRUST_STEPS, "seconds": best, "trust_over_cams": trust / best["cams"],
        **common.stamp("bench/trust_speed.py", argv),
    }
    print(f"explain step CAMs ({len(chosen)} mistakes x 2 classes): {best['cams']:.2f} s\n"
          f"trust step on {k} class-stratified images (CAMs, deletion/insertion, randomization, intervals, "
          f"pictures): {trust:.2f} s\n"
          f"trust / CAMs = {result['trust_over_cams']:.2f}x  (best of {args.repeats}, {source})")
    return results.finish(result, measured=True)


if __name__ == "__main__":
    common.entry(main)
