#!/usr/bin/env bash
# The ONE device call of issue 18 (carry [".carry"], made by bench/device/prepare.sh; timeout_s 480):
#   bash bench/device/command.sh
# Installs the carried wheels offline, runs bench/headline.py within BUDGET_S, and leaves in $OUT: headline.json,
# log.txt, real-run.tar (for docs/real-run/) and steps.tar (each step's own JSON and logs). The simulated image
# (bench/device/simulate.sh) runs this same file with CARRY, OUT, BUDGET_S, HEADLINE_EXTRA and RECIPE_FLAGS set.
carry=${CARRY:-.carry}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$carry"/whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit
export PYTHONUNBUFFERED=1 WANDB_SILENT=true
work=${WORK:-/tmp/headline}
rm -rf "$work/real-run" "$work/steps"
mkdir -p "$work"  # headline.py refuses an output folder whose parent is missing
set -o pipefail
# shellcheck disable=SC2086  # HEADLINE_EXTRA and RECIPE_FLAGS are word lists
python3 bench/headline.py --archives "$carry/data" --work "$work" --budget_s "${BUDGET_S:-420}" \
  --parallel "${PARALLEL:-3}" --json "$OUT/headline.json" --steps_dir "$work/steps" \
  --real_run_out "$work/real-run" ${HEADLINE_EXTRA:-} -- ${RECIPE_FLAGS:-} 2>&1 | tee "$OUT/log.txt"
status=$?
tar -C "$work" -cf "$OUT/real-run.tar" real-run 2>/dev/null
tar -C "$work" -cf "$OUT/steps.tar" steps 2>/dev/null
exit $status
