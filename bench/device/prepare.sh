#!/usr/bin/env bash
# Build the folder the GPU call carries: the wheels the device image lacks (bench/device/requirements.txt, plus
# airbench's, built from its sdist) and the two data archives. Run from anywhere; writes <repo>/.carry/ (git-ignored
# through .git/info/exclude) and prints its size against the 64 MiB the working tree may take in all.
#
#   bash bench/device/prepare.sh                 # cp312 wheels for the H200 image (Python 3.12)
#   PYTHON_VERSION=3.11 CARRY=.carry-311 bash bench/device/prepare.sh   # the same set for this machine's Python
#
# Then, in ONE device call with carry [".carry"], the command in bench/device/command.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
carry=${CARRY:-.carry}
py=${PYTHON_VERSION:-3.12}
data=${ARCHIVES:-$repo/../shared/data}
cd "$repo"
grep -qxF "/$carry/" .git/info/exclude 2>/dev/null || echo "/$carry/" >> .git/info/exclude
rm -rf "$carry" && mkdir -p "$carry/whl" "$carry/data"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" \
  -d "$carry/whl" -r bench/device/requirements.txt
# airbench 0.1.8 is an sdist only: a pure-Python wheel built here installs anywhere
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$carry/whl" airbench==0.1.8
cp "$data/cifar10-jpeg.tar.xz" "$data/cifar10-png-lossless-subset.tar.xz" "$carry/data/"
du -b "$carry"/whl/*.whl "$carry"/data/* | sort -n | awk '{printf "%10.2f MiB  %s\n", $1 / 1048576, $2}'
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$(du -sb "$carry" | cut -f1)
awk -v c="$total" -v t="$tree" 'BEGIN { printf "carry %.2f MiB + working tree %.2f MiB = %.2f MiB of 64 MiB\n",
  c / 1048576, t / 1048576, (c + t) / 1048576; exit (c + t > 64 * 1048576) }'
