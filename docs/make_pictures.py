"""Make the synthetic image folder behind the README's probe and ``--images`` pictures.

CIFAR-10's images may not be committed, not even as thumbnails, so the README's pictures of probes and of
``explain/run.py --images`` come from a data set anyone can regenerate: noise images whose class is told only by a
solid square of its colour (the planted-patch data of the CAM tests), in the image-folder layout ``train/run.py``
reads. A model that learns the task must look at the square, so the pictures show attention moving onto it. A few
test images are filed under a wrong class (``planted-*.png``: a red square in the green folder, ...), the label errors
that the explain step's label issues must find.

    python docs/make_pictures.py /tmp/patches          # writes /tmp/patches/{train,test}/<colour>/*.png and extras/
    python train/run.py --data_dir /tmp/patches --epochs 4 --batch_size 50 --probe_images 6 --run_name patches
    python explain/run.py --checkpoint runs/patches/best.pt --images /tmp/patches/extras
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
PATCH = 6


def patch_image(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 32) -> np.ndarray:
    """Uniform noise with a solid ``PATCH``-pixel square (scaled with ``size``) of ``colour`` somewhere."""
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    side = PATCH * size // 32
    y, x = rng.integers(0, size - side + 1, 2)
    image[y:y + side, x:x + side] = colour
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=300, help="training images per class")
    parser.add_argument("--test", type=int, default=50, help="test images per class")
    parser.add_argument("--planted", type=int, default=2, help="test images per class filed under the next class")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for split, count in (("train", args.train), ("test", args.test)):
        for name, colour in COLOURS.items():
            folder = args.root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(patch_image(rng, colour)).save(folder / f"{i:04d}.png")
    names = list(COLOURS)
    for i, name in enumerate(names):  # label errors: an image of this colour in the next colour's test folder
        wrong = names[(i + 1) % len(names)]
        for k in range(args.planted):
            planted = args.root / "test" / wrong / f"planted-{name}-{k}.png"
            Image.fromarray(patch_image(rng, COLOURS[name])).save(planted)
    extras = args.root / "extras"  # "any image": other sizes and modes than the training data
    extras.mkdir(parents=True, exist_ok=True)
    Image.fromarray(patch_image(rng, COLOURS["red"], 96)).save(extras / "red_96px.jpg", quality=90)
    Image.fromarray(patch_image(rng, COLOURS["green"], 64)).convert("RGBA").save(extras / "green_rgba.png")
    Image.fromarray(patch_image(rng, COLOURS["blue"])).convert("P").save(extras / "blue_palette.png")
    print(f"wrote {args.root}/train, test ({len(COLOURS)} classes) and extras/")


if __name__ == "__main__":
    main()
