"""The headline figures in one command: what the JPEG copy costs, airbench94 beside our default on the same images,
recipe variants, a real run's outputs and phases, and throughput.

Made for a GPU lent for a few minutes: every flag is checked before any work (a bad one: one ``error:`` line, exit
status 2), then each step runs the benchmark that owns it in its own process, under what is left of ``--budget_s``,
and the results file (``--json``) is rewritten as soon as a step ends, so a run cut short keeps every finished step.
The file is never replaced with less: this run's steps are merged into the one already there (a step measured now
replaces that step, the others keep their figures, listed under ``kept_from_earlier``), and a run that measured no
step leaves it as it was and exits 1. First the data sets are made from the two archives of ``--archives``
(``bench/cifar_sets.py``: the JPEG copy, the lossless subset and its JPEG twins, airbench's ``.pt`` format), then:

1. ``jpeg_cost`` — ``bench/jpeg_cost.py``: the recipe trained on the 8,068 lossless originals and on their JPEG
   twins, each model tested on both test sets (1,017 images): ``jpeg_cost.{png_png, png_jpeg, jpeg_png, jpeg_jpeg}``
   (train data _ test data), one accuracy per seed.
2. ``airbench94`` — ``bench/airbench94.py``: ``airbench.train94`` on the full JPEG copy, its TTA accuracy and
   seconds per seed (needs CUDA and airbench; skipped, saying why, without them).
3. ``default`` — ``bench/time_to_acc.py --full``: our default recipe on the full JPEG copy, one process per seed.
4. ``recipe`` — each flag set of ``--variants`` trained like ``default`` (all seeds in one process, ``--parallel``
   processes at a time), started while the time left exceeds ``--reserve_s`` (kept for the last two steps) plus
   what ``default`` took, stopped when only ``--reserve_s`` is left. Each flag set is checked by ``train/run.py``'s
   own parser before any work (a flag it does not know is refused). Nothing is adopted: each variant's mean, spread
   and difference to ``default`` (this run's, else the results file's); ``winners`` are those ahead by at least 0.3
   points.
5. ``real_run`` — ``bench/run_phases.py``: ``train/run.py``'s default recipe on the full JPEG copy, W&B offline,
   explain (64), trust, probes (20), every output; its small outputs copied to ``--real_run_out``; the run's wall
   time by phase (``wall_seconds``) and the time inside each W&B call (``wandb_fixed_seconds``).
6. ``speed`` — ``bench/speed.py``: training images/s and MFU, eager and ``torch.compile`` (``--compile_modes``) at
   each of ``--speed_batch_sizes`` (``throughput``).

Everything after ``--`` goes to every training step (e.g. a tiny run on a CPU). The keys the issue fixes: ``device``,
``date``, ``torch``, ``default``, ``airbench94``, ``jpeg_cost``, ``throughput``, ``wandb_fixed_seconds``,
``wall_seconds``; the detail under ``steps``, ``recipe``, ``data``, ``skipped``, ``notes``, ``markdown``::

    python bench/headline.py --archives .carry/data --json $OUT/headline.json --real_run_out /tmp/real-run  # a GPU
    python bench/headline.py --per_class 20,5 --seeds 0 --speed_images 100 --speed_batch_sizes 50 \\
        --compile_modes= -- --epochs 1 --batch_size 50 --device cpu                                      # a smoke test
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python bench/headline.py`: import the repo's packages
    sys.path[0] = str(REPO)

from bench import common  # noqa: E402  (after the path set-up)
from bench.cifar_sets import JPEG_ARCHIVE, PNG_ARCHIVE  # noqa: E402
from bench.jpeg_cost import CELLS  # noqa: E402

STEPS = ("jpeg_cost", "airbench94", "default", "recipe", "real_run", "speed")
NEEDS_DATA = set(STEPS)
# The recipe step's flag sets, in order of interest (each checked by train/run.py's parser before any work).
RECIPE_VARIANTS = ("--ema=0.999", "--label_smoothing=0.2", "--batch_size=1024", "--warmup_epochs=1",
                   "--warmup_epochs=6")
WIN_MARGIN = 0.003  # a variant "wins" when its mean beats the default's by at least 0.3 points
MIN_STEP_SECONDS = 20  # a step is not started with less than this left of the budget
REAL_RUN_FLAGS = ["--wandb_mode=offline", "--explain_samples=64", "--trust=True", "--probe_images=20"]


# What every results file holds, whatever ran: the keys, empty until a step fills them.
BASE = {"device": None, "date": None, "torch": None, "default": {"acc": [], "acc_no_tta": [], "train_seconds": []},
        "airbench94": {"acc": [], "seconds": []}, "jpeg_cost": {cell: [] for cell in CELLS}, "throughput": {},
        "wandb_fixed_seconds": {}, "wall_seconds": {}, "command": None, "steps": {}, "skipped": {}, "notes": []}
spread = common.spread


def last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1]


class Headline:
    """This run's results, merged into the results file (atomically) after every step once a step has measured
    something, and the time budget the steps share."""

    def __init__(self, results: common.Results, budget_s: float, machine: dict, command: dict):
        self.results, self.deadline = results, time.monotonic() + budget_s
        self.result: dict = {**machine, **command, "steps": {}, "skipped": {}}  # this run's: measured keys only

    @property
    def measured(self) -> bool:
        return bool(self.result["steps"]) or "recipe" in self.result

    def merged(self) -> dict:
        """The results file as it will be: the earlier file with this run's steps replacing theirs; a step measured
        now is no longer listed as skipped by an earlier run; the Markdown tables of it all."""
        merged = self.results.merged({**self.result, "markdown": None})  # the tables are made below
        now = {*self.result["steps"], *(["recipe"] if "recipe" in self.result else [])}
        merged["skipped"] = {name: why for name, why in merged["skipped"].items()
                             if name in self.result["skipped"] or name.split()[0] not in now}
        kept = [key for key in merged.pop(common.KEPT, [])
                if not key.startswith("skipped.") or key[len("skipped."):] in merged["skipped"]]
        if kept:
            merged[common.KEPT] = kept
        merged["markdown"] = markdown(merged)
        return merged

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        if self.measured:  # until then the file stays as it was
            self.results.save(self.merged())

    def run(self, name: str, argv: list[str], json_path: Path, *, cwd: Path = REPO) -> dict | None:
        """Run one benchmark under the time left; its JSON, or None (and why, in ``skipped``) when it did not end."""
        return self.run_many([(name, argv, json_path)], parallel=1, cwd=cwd)[0]

    def run_many(self, jobs: list[tuple[str, list[str], Path]], parallel: int, cwd: Path = REPO,
                 start_if=lambda: True, keep_s: float = 0.0) -> list[dict | None]:
        """Run the ``jobs`` (name, argv, JSON path), ``parallel`` at a time, each started only while ``start_if()``
        and :data:`MIN_STEP_SECONDS` of the budget are left, all stopped when only ``keep_s`` seconds of it are left
        (kept for later steps); their JSON, in order (None for one that did not end, its reason in ``skipped``).
        Alone, a job's output streams through; side by side, each writes a log beside its JSON and its last line is
        printed."""
        results: list[dict | None] = [None] * len(jobs)
        waiting, running = list(range(len(jobs))), {}
        while waiting or running:
            while waiting and len(running) < parallel:
                index = waiting.pop(0)
                name, argv, json_path = jobs[index]
                if self.left() < MIN_STEP_SECONDS or not start_if():
                    self.skip(name, f"out of time ({self.left():.0f}s of the budget left)")
                    continue
                json_path.unlink(missing_ok=True)
                print(f"[headline] {name}: {' '.join(argv)}", flush=True)
                log = open(json_path.with_suffix(".log"), "w") if parallel > 1 else None  # noqa: SIM115
                process = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=log or sys.stdout,
                                           stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True)
                running[index] = (process, time.monotonic(), log)
            if not running:
                break
            index, (process, start, log) = next(iter(running.items()))
            try:
                _, stderr = process.communicate(timeout=max(self.left() - keep_s, 0.1))
            except subprocess.TimeoutExpired:
                for other, _, _ in running.values():
                    other.kill()
                    other.communicate()
                for other in list(running):
                    self.skip(jobs[other][0], f"stopped at the end of the budget after "
                                              f"{time.monotonic() - running[other][1]:.0f}s"
                                              + (f" (its last {keep_s:.0f}s kept for later steps)" if keep_s else ""))
                running.clear()
                self.skip_all(jobs, waiting)
                break
            del running[index]
            name, _, json_path = jobs[index]
            if log:  # side by side, a job's stderr went to its log too
                log.close()
                stderr = json_path.with_suffix(".log").read_text()
                print(f"[headline] {name}: {last_line(stderr)}", flush=True)
            else:
                sys.stderr.write(stderr[-4000:])
            if process.returncode != 0 or not json_path.is_file():
                self.skip(name, f"exit {process.returncode}: {last_line(stderr)}")
            else:
                results[index] = json.loads(json_path.read_text())
                print(f"[headline] {name}: done in {time.monotonic() - start:.0f}s", flush=True)
        return results

    def skip_all(self, jobs: list, waiting: list[int]) -> None:
        for index in waiting:  # the budget ended while earlier jobs ran
            self.skip(jobs[index][0], "out of time (0s of the budget left)")
        waiting.clear()

    def skip(self, name: str, why: str) -> None:
        print(f"[headline] {name} skipped: {why}", flush=True)
        self.result["skipped"][name] = why
        self.save()

    def record(self, name: str, value: dict) -> None:
        self.result["steps"][name] = value
        self.save()


# ---------------------------------------------------------------------------------------------------------------------
# The steps


def step_jpeg_cost(head: Headline, args, recipe: list[str]) -> None:
    out = args.work_json / "jpeg_cost.json"
    data = head.run("jpeg_cost", ["bench/jpeg_cost.py", "--png_dir", args.sets["png"], "--jpeg_dir",
                                  args.sets["jpeg_twins"], f"--seeds={args.seeds_text}", f"--json={out}", *recipe], out)
    if data is not None:
        head.result["jpeg_cost"] = {cell: data[cell] for cell in CELLS}
        head.record("jpeg_cost", data)


def step_airbench94(head: Headline, args, recipe: list[str]) -> None:
    out = args.work_json / "airbench94.json"
    data = head.run("airbench94", ["bench/airbench94.py", "--data", args.sets["airbench"], "--device=cuda",
                                   f"--seeds={args.seeds_text}", f"--json={out}"], out)  # the GPU's figure
    if data is not None:
        head.result["airbench94"] = {"acc": data["acc"], "seconds": data["seconds"]}
        head.record("airbench94", data)


def step_default(head: Headline, args, recipe: list[str]) -> None:
    runs, start = [], time.monotonic()
    for seed in args.seeds:
        out = args.work_json / f"default-seed{seed}.json"
        data = head.run(f"default seed {seed}", ["bench/time_to_acc.py", "--data_dir", args.sets["jpeg"], "--full",
                                                 f"--seeds={seed}", f"--json={out}", *recipe], out)
        if data is None:
            break
        runs.extend(data["runs"])
        head.result["default"] = {"acc": [r["final_acc"] for r in runs],
                                  "acc_no_tta": [r["final_acc_no_tta"] for r in runs],
                                  "train_seconds": [r["train_seconds"] for r in runs]}
        head.record("default", {
            "device": data["device"], "torch": data["torch"], "config": data["config"],
            "train_images": data["train_images"], "test_images": data["test_images"],
            "seeds": [run["seed"] for run in runs], "seconds": time.monotonic() - start,
            "val_acc": spread([run["final_acc"] for run in runs]),
            "val_acc_no_tta": spread([run["final_acc_no_tta"] for run in runs]),
            "train_seconds": spread([run["train_seconds"] for run in runs]),
            "images_per_second": spread([run["images_per_second"] for run in runs]), "runs": runs,
        })


def step_recipe(head: Headline, args, recipe: list[str]) -> None:
    known = head.merged()  # the default of this run, or of the earlier one in the results file
    default = known["default"]["acc"]
    base = statistics.fmean(default) if default else None
    estimate = known["steps"].get("default", {}).get("seconds", 0.0)  # what one variant's seeds should take
    variants, jobs = [], []
    for text in args.variants:
        flags = text.split()
        entry = {"flags": flags}
        variants.append(entry)
        slug = "_".join(f.lstrip("-").replace("=", "-") for f in flags)
        out = args.work_json / f"recipe-{slug}.json"
        entry["json"] = out
        jobs.append((f"recipe {text}", ["bench/time_to_acc.py", "--data_dir", args.sets["jpeg"], "--full",
                                         f"--seeds={args.seeds_text}", f"--json={out}", *recipe, *flags], out))
    results = iter(head.run_many(jobs, parallel=args.parallel,
                                 start_if=lambda: head.left() - args.reserve_s >= estimate, keep_s=args.reserve_s))
    for entry in variants:
        if "json" not in entry:
            continue
        out = entry.pop("json")
        data = next(results)
        if data is None:
            entry["status"] = "skipped: " + head.result["skipped"].get(f"recipe {' '.join(entry['flags'])}", "")
            continue
        acc = [run["final_acc"] for run in data["runs"]]
        entry.update(status="ran", seeds=[run["seed"] for run in data["runs"]], acc=acc,
                     acc_no_tta=[run["final_acc_no_tta"] for run in data["runs"]],
                     train_seconds=[run["train_seconds"] for run in data["runs"]], spread=spread(acc),
                     config=data["config"], json=str(out),
                     diff_to_default=statistics.fmean(acc) - base if base is not None else None)
    winners = [" ".join(v["flags"]) for v in variants
               if v.get("diff_to_default") is not None and v["diff_to_default"] >= WIN_MARGIN]
    if not any(v["status"] == "ran" for v in variants):  # none ran: an earlier run's recipe table stays
        return
    airbench = known["airbench94"]["acc"]
    head.result["recipe"] = {"default_mean": base, "airbench94_mean": statistics.fmean(airbench) if airbench else None,
                             "win_margin": WIN_MARGIN, "variants": variants, "winners": winners,
                             "parallel": args.parallel}
    head.save()


def step_real_run(head: Headline, args, recipe: list[str]) -> None:
    out = args.work_json / "real_run.json"
    dest = Path(args.real_run_out)
    dest.parent.mkdir(parents=True, exist_ok=True)  # the default's bench/out/, say
    work = Path(args.work) / f"real-run-{time.strftime('%Y%m%d-%H%M%S')}"
    data = head.run("real_run", ["bench/run_phases.py", f"--work={work}", f"--copy_to={dest}", f"--json={out}", "--",
                                 "--data_dir", args.sets["jpeg"], *REAL_RUN_FLAGS, *recipe], out)
    if data is None:
        return
    head.result["wall_seconds"] = dict(data["wall_seconds"])
    first = head.result["data"]["seconds"].get("data_decoding_first_run")
    if first is not None:  # measured when the data sets were made (the first decoding of the JPEG copy)
        head.result["wall_seconds"]["data_decoding_first_run"] = first
    head.result["wandb_fixed_seconds"] = {**data["wandb_seconds"], "exit_hooks": data["wall_seconds"]["exit_hooks"]}
    head.result["notes"] = ["wandb_fixed_seconds.exit_hooks is the time the real run's process spent in its atexit "
                            "hooks after main() returned (W&B's service shutdown among them)"]
    head.record("real_run", data)


def step_speed(head: Headline, args, recipe: list[str]) -> None:
    out = args.work_json / "speed.json"
    data = head.run("speed", ["bench/speed.py", "--data_dir", args.sets["jpeg"], f"--images={args.speed_images}",
                              f"--epochs={args.speed_epochs}", f"--device={args.config.device}",
                              f"--batch_sizes={','.join(map(str, args.speed_batch_sizes))}",
                              f"--compile_modes={','.join(args.compile_modes)}", "--no_baseline", f"--json={out}"], out)
    if data is not None:
        head.result["throughput"] = data["throughput"]
        head.record("speed", data)


RUNNERS = {"jpeg_cost": step_jpeg_cost, "airbench94": step_airbench94, "default": step_default,
           "recipe": step_recipe, "real_run": step_real_run, "speed": step_speed}


# ---------------------------------------------------------------------------------------------------------------------
# The tables


def pct(values: list[float]) -> str:
    stat = spread(values)
    if not stat:
        return "—"
    return f"{stat['mean'] * 100:.2f} % ± {stat['std'] * 100:.2f} (n={stat['n']})"


def markdown(result: dict) -> str:
    """The results as Markdown tables (for BENCHMARKS.md)."""
    jc, lines = result["jpeg_cost"], []
    lines += ["| trained on \\ tested on | lossless PNG | JPEG twins |", "| --- | --- | --- |",
              f"| lossless PNG | {pct(jc['png_png'])} | {pct(jc['png_jpeg'])} |",
              f"| JPEG twins | {pct(jc['jpeg_png'])} | {pct(jc['jpeg_jpeg'])} |", ""]
    d, a = result["default"], result["airbench94"]
    lines += ["| recipe, full JPEG copy | test acc | seconds |", "| --- | --- | --- |",
              f"| ours, default (flip TTA) | {pct(d['acc'])} | "
              f"{spread(d['train_seconds'])['mean']:.1f} s training |" if d["train_seconds"] else
              "| ours, default (flip TTA) | — | — |",
              f"| airbench94 (tta_level 2) | {pct(a['acc'])} | {spread(a['seconds'])['mean']:.1f} s |"
              if a["seconds"] else "| airbench94 (tta_level 2) | — | — |"]
    if "recipe" in result:
        lines += ["", "| variant | test acc | vs default |", "| --- | --- | --- |"]
        for v in result["recipe"]["variants"]:
            diff = v.get("diff_to_default")
            lines.append(f"| `{' '.join(v['flags'])}` | {pct(v['acc']) if 'acc' in v else v['status']} | "
                         + (f"{diff * 100:+.2f} points |" if diff is not None else "— |"))
    for title, key, unit in (("throughput", "throughput", "img/s"), ("W&B phase", "wandb_fixed_seconds", "s"),
                             ("wall-time phase", "wall_seconds", "s")):
        if result[key]:
            lines += ["", f"| {title} | {unit} |", "| --- | --- |",
                      *(f"| {k} | {v:,.0f} |" if unit == "img/s" else f"| {k} | {v:.2f} |"
                        for k, v in result[key].items())]
    if result["skipped"]:
        lines += ["", "| not measured | why |", "| --- | --- |",
                  *(f"| {k} | {v} |" for k, v in result["skipped"].items())]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--archives", type=common.folder(JPEG_ARCHIVE, PNG_ARCHIVE),
                        default=str(REPO.parent / "shared" / "data"), help=f"the folder of {JPEG_ARCHIVE} and "
                        f"{PNG_ARCHIVE}")
    parser.add_argument("--work", type=common.out_folder, default=REPO / ".bench-data" / "headline",
                        help="where the data sets are made (reused) and the real run trains")
    parser.add_argument("--per_class", type=common.ints(minimum=1, length=2, what="TRAIN,TEST"),
                        help="TRAIN,TEST: only the first images of each class (tests)")
    parser.add_argument("--seeds", type=common.ints(minimum=0), default="0,1,2", help="comma-separated seeds of "
                        "every accuracy")
    parser.add_argument("--steps", type=common.choices(STEPS), default=",".join(STEPS),
                        help=f"which of {', '.join(STEPS)} to run, in order")
    parser.add_argument("--budget_s", type=common.number(minimum=MIN_STEP_SECONDS), default=430,
                        help="seconds for all steps; later ones are skipped")
    parser.add_argument("--variants", default=";".join(RECIPE_VARIANTS),
                        help="the recipe step's flag sets, separated by ';' (flags within one by spaces)")
    parser.add_argument("--parallel", type=common.count(1), default=1, help="recipe variants trained at the same time")
    parser.add_argument("--reserve_s", type=common.number(minimum=0), default=150,
                        help="seconds of the budget the recipe step leaves to real_run and speed")
    parser.add_argument("--real_run_out", type=common.out_folder, default=REPO / "bench" / "out" / "real-run",
                        help="a new folder: the real run's small outputs (for docs/real-run/)")
    parser.add_argument("--speed_images", type=common.count(1), default=25000,
                        help="training images per epoch of `speed`")
    parser.add_argument("--speed_epochs", type=common.count(1), default=1,
                        help="timed epochs of `speed` (after a warm-up)")
    parser.add_argument("--speed_batch_sizes", type=common.ints(minimum=1), default="512,1024",
                        help="batch sizes of `speed`")
    parser.add_argument("--compile_modes", default="default,reduce-overhead", help="torch.compile modes of `speed`")
    parser.add_json(REPO / "bench" / "out" / "headline.json")
    parser.add_argument("--steps_dir", type=common.out_folder,
                        help="where each step writes its own JSON (default: beside --json)")
    args = parser.parse(argv, rest="--")
    recipe, steps = args.rest, args.steps
    # The training flags, checked by train/run.py's own parser, alone and with each recipe variant.
    args.config = common.recipe_config(recipe, seeds=True)
    args.variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    for text in args.variants:
        common.recipe_config([*recipe, *text.split()], what=f"--variants {text!r}", seeds=True)
    if "recipe" in steps and not args.variants:
        parser.error("--variants names no flag set, and --steps includes recipe")
    if "real_run" in steps and args.real_run_out.is_dir() and any(args.real_run_out.iterdir()):
        parser.error(f"--real_run_out {str(args.real_run_out)!r} is not empty (a run never overwrites another)")
    if "speed" in steps and args.speed_images < max(args.speed_batch_sizes):
        parser.error(f"--speed_images {args.speed_images} is fewer than a batch of --speed_batch_sizes")
    import torch

    args.compile_modes = [m for m in args.compile_modes.split(",") if m]
    if unknown := [m for m in args.compile_modes if m != "default" and m not in torch._inductor.list_mode_options()]:
        parser.error(f"--compile_modes has unknown mode(s) {', '.join(unknown)}")
    machine = common.machine(common.device(args.config.device))
    results = common.Results(args.json, machine, base=BASE)
    args.seeds_text = ",".join(map(str, args.seeds))
    json_path = args.json.resolve()
    steps_dir = args.steps_dir or json_path.with_name(f"{json_path.stem}-steps")
    args.work_json = steps_dir.resolve()
    args.work_json.mkdir(parents=True, exist_ok=True)  # each step's own JSON; all of it lands in --json too

    head = Headline(results, args.budget_s, machine, common.stamp("bench/headline.py", argv))
    if NEEDS_DATA & set(steps):
        out = args.work_json / "data.json"
        per_class = [f"--per_class={','.join(map(str, args.per_class))}"] if args.per_class else []
        sets = head.run("data", ["bench/cifar_sets.py", "--archives", str(args.archives), "--work", str(args.work),
                                 *per_class, f"--json={out}"], out)
        if sets is None:
            for step in steps:
                head.skip(step, f"no data sets: {head.result['skipped']['data']}")
            steps = []
        else:
            args.sets, head.result["data"] = sets, sets
    for step in steps:
        RUNNERS[step](head, args, recipe)
    if not head.measured:
        return results.finish(head.result, measured=False, why="every step was skipped (see above)")
    head.save()
    print(head.merged()["markdown"])
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    common.entry(main)
