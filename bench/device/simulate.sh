#!/usr/bin/env bash
# The device call, rehearsed on this CPU in a simulated device image: a venv that sees only the image's packages
# (bench/device/image_packages.txt, linked from this machine's Python where it has them) plus the carried wheels,
# built for this Python by prepare.sh, installed by bench/device/command.sh exactly as on the GPU machine; then
# bench/headline.py end to end on a few hundred images. The JSON lands in $OUT (default /tmp/sim-out).
#
#   bash bench/device/simulate.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
sim=${SIM:-/tmp/sim-image}
export OUT=${OUT:-/tmp/sim-out}
py=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
CARRY=.carry-sim PYTHON_VERSION=$py bash bench/device/prepare.sh >/dev/null
rm -rf "$sim" "$OUT" /tmp/site /tmp/sim-work && mkdir -p "$OUT"
python3 -m venv "$sim"
python3 - "$sim" <<'PY'
"""Link each image package this Python has into $sim/image-site, and put that folder on the venv's path."""
import importlib.metadata as md, pathlib, site, sys, sysconfig

sim = pathlib.Path(sys.argv[1])
names = [l.strip() for l in open("bench/device/image_packages.txt") if l.strip() and not l.startswith("#")]
dest = sim / "image-site"
dest.mkdir()
linked, missing = 0, []
for name in names:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        missing.append(name)
        continue
    base = pathlib.Path(dist.locate_file(""))
    tops = {pathlib.Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        if top.endswith(".pth") or top == "__pycache__" or (dest / top).exists() or not (base / top).exists():
            continue
        (dest / top).symlink_to(base / top)
        linked += 1
venv_site = next(sim.glob("lib/python*/site-packages"))
(venv_site / "image.pth").write_text(str(dest) + "\n")
print(f"simulated image: {linked} entries of {len(names) - len(missing)} packages linked; not on this machine: "
      f"{', '.join(missing)}")
PY
PATH="$sim/bin:$PATH" CARRY=.carry-sim WORK=/tmp/sim-work BUDGET_S=${BUDGET_S:-1500} PARALLEL=1 \
  HEADLINE_EXTRA="--per_class 10,5 --seeds 0 --variants=--ema=0.999;--label_smoothing=0.2 --reserve_s 0
    --speed_images 100 --speed_batch_sizes 50 --compile_modes=" \
  RECIPE_FLAGS="--epochs 1 --batch_size 50 --device cpu --trust_images 8" bash bench/device/command.sh
