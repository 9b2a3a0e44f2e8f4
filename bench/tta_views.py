"""Flip + translate TTA (airbench's ``tta_level=2``) against the flip TTA a run reports, on a finished run's own
test images, and those views kept for the label issues.

The run folder's ``predictions.npz`` names the images its explain step checked (all 10,000 test images in the real
run); the run's ``best.pt`` predicts them again in six views, in the run's precision: the image, its mirror, and each
of the two shifted by one pixel up-left and down-right (reflect-padded), mirrored too. ``flip`` averages the first
two (the run's ``val/acc``), ``flip_translate`` is airbench's ``0.5 * flip + 0.5 * mean(four shifted views)``.
Reported: the accuracy of ``single``, ``flip`` and ``flip_translate``, their paired per-image difference
(``flip_translate`` − ``flip``) with its 95 % interval and a verdict (better / worse / inconclusive), the images each
view alone gets right, and the seconds of the six views. With ``--out`` the run's ``predictions.npz`` (plus
``logits_translate`` and ``logits_translate_flip``: the mean of the two shifted views, unmirrored and mirrored) and
``label_issues.json`` go to a new folder that ``bench/label_quality.py`` scores with the translate views too.

    python bench/tta_views.py docs-run-folder --data_dir cifar10-jpeg --out .bench-data/tta-views
    python bench/label_quality.py .bench-data/tta-views
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/tta_views.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common

REPO = Path(__file__).resolve().parents[1]
Z95 = 1.959963984540054  # the normal distribution's 97.5 % point


def paired_interval(a_right, b_right) -> dict:
    """The difference in accuracy ``mean(b_right) − mean(a_right)`` of two predictions of the same images (boolean
    arrays), its 95 % interval and verdict. Per image the difference is −1, 0 or +1; with ``gained`` (b right, a wrong)
    and ``lost`` the interval is the Wald interval of a paired difference of proportions (McNemar's setting):
    ``d ± z·sqrt(gained + lost − n·d²) / n``. Written here because scipy has no paired-proportion interval; its
    coverage at the sizes used (10,000 images, ~60 discordant each way) is simulated in the tests."""
    import numpy as np

    a_right, b_right = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    n = len(a_right)
    gained, lost = int((b_right & ~a_right).sum()), int((a_right & ~b_right).sum())
    diff = (gained - lost) / n
    half = Z95 * math.sqrt(max(gained + lost - n * diff ** 2, 0.0)) / n
    low, high = diff - half, diff + half
    verdict = "better" if low > 0 else "worse" if high < 0 else "inconclusive"
    return {"diff": diff, "ci95": [low, high], "verdict": verdict, "gained": gained, "lost": lost, "images": n}


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("run", type=common.folder("predictions.npz"), help="a finished run (or explain) folder")
    parser.add_argument("--checkpoint", type=common.file, default=None, help="the weights (default: RUN/best.pt)")
    parser.add_argument("--data_dir", type=common.folder("test"), required=True,
                        help="the image folder the run checked (its predictions.npz names the files)")
    parser.add_argument("--out", type=common.new_folder, default=None,
                        help="a new folder for the run's predictions.npz with the translate views, and its "
                             "label_issues.json (for bench/label_quality.py)")
    parser.add_json(REPO / "bench" / "results" / "tta_views.json")
    args = parser.parse(argv)
    checkpoint = args.checkpoint or args.run / "best.pt"
    if not checkpoint.is_file():
        common.fail(f"{checkpoint} is not a file (give --checkpoint: the run kept no best.pt)")
    results = common.Results(args.json, None, depth=1)  # an unreadable results file: refused before any work

    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F

    import train  # noqa: F401  (registers resnet18_cifar)
    from explain.report import write_npz
    from train.checkpoint import CheckpointError, load_checkpoint, load_model_state
    from train.config import ConfigError, config_from_dict
    from train.data import DataError, load_split
    from train.engine import amp_dtype, predict
    from train.model import check_model_name

    arrays = common.read_predictions(args.run / "predictions.npz", ("file", "label"))
    files, labels = arrays["file"].tolist(), torch.from_numpy(arrays["label"].astype(np.int64))
    if not all(files):
        common.fail(f"{args.run / 'predictions.npz'} names no files (a run on CIFAR-10's python batches)")
    try:
        state = load_checkpoint(checkpoint)
        config, classes = config_from_dict(state["config"]), list(state["classes"])  # defaults for what it lacks
        check_model_name(config.model)  # a model this timm lacks: one line, not timm's traceback
        model = timm.create_model(config.model, num_classes=len(classes))
        load_model_state(model, state, str(checkpoint))
        split = load_split(args.data_dir, "test", classes)
    except (CheckpointError, ConfigError, DataError, OSError) as exc:
        common.fail(str(exc))
    where = {name: i for i, name in enumerate(split.files or [])}
    missing = [name for name in files if name not in where]
    if missing:
        common.fail(f"--data_dir {str(args.data_dir)!r} lacks {len(missing)} of the run's images (first: "
                    f"{missing[0]}): give the image folder the run checked")
    pick = torch.tensor([where[name] for name in files])
    if not torch.equal(split.labels[pick], labels):
        common.fail(f"--data_dir {str(args.data_dir)!r} labels the run's images differently (another data set?)")
    images = split.images[pick].float().div(255)
    device = torch.device("cpu")
    amp = amp_dtype(config.precision, device)
    batch = config.eval_batch_size
    model.to(memory_format=torch.channels_last).eval()

    def views(pixels):
        """The logits of ``pixels`` and of their mirror images, as the run's evaluation computes them."""
        loader = [(pixels[i:i + batch], labels[i:i + batch]) for i in range(0, len(pixels), batch)]
        logits, mirrored, _ = predict(model, loader, amp=amp, channels_last=True, tta=True)
        return logits, mirrored

    start = time.perf_counter()
    single, mirror = views(images)
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")  # airbench's translate: one pixel each way, reflected
    up_left, up_left_mirror = views(padded[:, :, :-2, :-2])
    down_right, down_right_mirror = views(padded[:, :, 2:, 2:])
    seconds = time.perf_counter() - start
    flip = (single + mirror) / 2
    translate, translate_mirror = (up_left + down_right) / 2, (up_left_mirror + down_right_mirror) / 2
    flip_translate = 0.5 * flip + 0.5 * (translate + translate_mirror) / 2
    right = {name: (logits.argmax(1) == labels).numpy()
             for name, logits in (("single", single), ("flip", flip), ("flip_translate", flip_translate))}
    result = {"run": str(args.run), "checkpoint": str(checkpoint), "images": len(files),
              "precision": "bf16 autocast" if amp is not None else "fp32",
              "acc": {name: float(r.mean()) for name, r in right.items()},
              "flip_translate_vs_flip": paired_interval(right["flip"], right["flip_translate"]),
              "seconds_six_views": seconds, **common.machine("cpu"), **common.stamp("bench/tta_views.py", argv)}
    paired = result["flip_translate_vs_flip"]
    print(f"{args.run}: {len(files):,} images; single {result['acc']['single']:.2%}, flip {result['acc']['flip']:.2%}, "
          f"flip + translate {result['acc']['flip_translate']:.2%}: {paired['diff'] * 100:+.2f} points "
          f"[{paired['ci95'][0] * 100:+.2f}, {paired['ci95'][1] * 100:+.2f}] ({paired['gained']} gained, "
          f"{paired['lost']} lost): {paired['verdict']}; six views in {seconds:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_npz(args.out / "predictions.npz", {**arrays, "logits_translate": translate.numpy().astype(np.float16),
                                                 "logits_translate_flip": translate_mirror.numpy().astype(np.float16)})
        if (args.run / "label_issues.json").is_file():
            shutil.copy(args.run / "label_issues.json", args.out / "label_issues.json")
        result["out"] = str(args.out)
        print(f"wrote {args.out / 'predictions.npz'} (python bench/label_quality.py {args.out})")
    return results.finish({Path(args.run).resolve().name: result}, measured=True)


if __name__ == "__main__":
    common.entry(main)
