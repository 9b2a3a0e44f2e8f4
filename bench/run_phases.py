"""Where the wall time of ``python train/run.py`` goes, phase by phase, and what each W&B call costs.

Runs ``train/run.py``'s own ``main()`` with the flags after ``--`` in a fresh process, as a user would (same imports,
same code), with :func:`time.perf_counter` around the phases from the bench side: ``train.run``'s ``load_data``,
``set_up``, ``train_epochs``, ``explain_model``, ``write_probes`` and ``finish`` are wrapped in timers, and its
``Tracker`` is a subclass whose methods time themselves (the real ``train.tracking.Tracker`` does the work).
Nothing in ``train/`` changes. Writes JSON:

* ``wall_seconds`` — the process from its start (as the parent saw it) to its exit: ``startup_imports`` (Python,
  torch, timm, wandb, ...), ``data_decoding_first_run`` or ``data_decoding_cached`` (whichever this run did),
  ``setup`` (model, recipe, probes; the data and W&B's init excluded), ``wandb_init``, ``epochs`` (training,
  evaluation, checkpoints, rows), ``explain`` (CAMs, trust, label issues, tables, the probes' pictures), ``finish``
  (summary, model artifact), ``wandb_finish``, ``exit_hooks`` (after ``main`` returned, the ``atexit`` hooks: W&B's
  service shutting down and flushing, where an offline run's writes land), ``interpreter_exit``, ``other`` (what no
  timer covers: parsing, the out_dir lock) and ``total``;
* ``wandb_seconds`` — the time spent inside W&B per phase: ``import``, ``init``, ``epoch_rows`` (images made and
  rows logged), ``explain_row``, ``probes_row``, ``summary`` (the summary values and the last row's commit),
  ``model_artifact``, ``finish`` and ``total``
  (``import`` is also inside ``startup_imports``; W&B's table building inside the explain step is not a Tracker
  call and stays in ``explain``).

``--copy_to DIR`` copies the run's small outputs there (every ``.json``, ``.jsonl``, ``.png`` and ``.npz``; no
checkpoint, no ``wandb/``). W&B writes under ``--work`` (offline unless the flags say otherwise).

    python bench/run_phases.py --work /tmp/rp --copy_to docs/real-run --json phases.json -- \\
        --data_dir .bench-data/cifar10-jpeg --wandb_mode offline
"""

from __future__ import annotations

import time

STARTED = time.time()  # before any other import: the start of the measured process

import atexit  # noqa: E402  (after the clock)
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python bench/run_phases.py`: import the repo's packages
    sys.path[0] = str(REPO)

from bench import common  # noqa: E402  (after the path set-up)

OUTPUT_SUFFIXES = (".json", ".jsonl", ".png", ".npz")  # predictions.npz: label issues re-scored later
WANDB_FOLDERS = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")


class Clock:
    """Seconds per named phase (wall time, summed over calls), and the phase the run is in now."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.wandb: dict[str, float] = defaultdict(float)
        self.phase = "setup"

    @contextmanager
    def timing(self, name: str, *, phase: str | None = None, wandb: bool = False):
        previous, start = self.phase, time.perf_counter()
        self.phase = phase or self.phase
        try:
            yield
        finally:
            (self.wandb if wandb else self.seconds)[name] += time.perf_counter() - start
            self.phase = previous

    def wrap(self, module, name: str, key: str, phase: str | None = None) -> None:
        """Replace ``module.name`` by the same function timed under ``key``."""
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            with self.timing(key, phase=phase):
                return fn(*args, **kwargs)

        setattr(module, name, timed)


WANDB_PHASE = {"setup": "epoch_rows", "epochs": "epoch_rows", "explain": "explain_row", "probes": "probes_row",
               "finish": "summary"}


def timed_tracker(base: type, clock: Clock) -> type:
    """A subclass of ``train.tracking.Tracker`` whose W&B calls add their time to ``clock.wandb``."""

    class TimedTracker(base):
        def __init__(self, *args, **kwargs):
            with clock.timing("init", wandb=True):
                super().__init__(*args, **kwargs)

        def _wandb_row(self, *args, **kwargs):
            with clock.timing(WANDB_PHASE.get(clock.phase, clock.phase), wandb=True):
                return super()._wandb_row(*args, **kwargs)

        def log(self, *args, **kwargs):
            with clock.timing(WANDB_PHASE.get(clock.phase, clock.phase), wandb=True):
                return super().log(*args, **kwargs)

        def summary(self, *args, **kwargs):
            key = "explain_row" if clock.phase == "explain" else "summary"
            with clock.timing(key, wandb=True):
                return super().summary(*args, **kwargs)

        def log_model(self, *args, **kwargs):
            with clock.timing("model_artifact", wandb=True):
                return super().log_model(*args, **kwargs)

        def finish(self, *args, **kwargs):
            with clock.timing("finish", wandb=True):
                return super().finish(*args, **kwargs)

    return TimedTracker


def child(report: Path, run_args: list[str]) -> int:
    """In the measured process: run ``train.run.main(run_args)`` with the timers; their readings to ``report``."""
    clock = Clock()
    stamps = {"started": STARTED}
    # registered first, so it runs last: what the other exit hooks (W&B's service shutdown) take is measured
    atexit.register(lambda: report.with_suffix(".exit").write_text(repr(time.time())))
    try:
        with clock.timing("import", wandb=True):
            import wandb  # noqa: F401  (timm imports it too when it can: timed here, first)
    except ImportError:
        pass
    sys.path[0] = str(REPO)
    import train.run as run_module

    stamps["imported"] = time.time()
    data_dir = next((a.split("=", 1)[1] for a in run_args if a.startswith("--data_dir=")), None) or \
        (run_args[run_args.index("--data_dir") + 1] if "--data_dir" in run_args[:-1] else "data")
    cached = (Path(data_dir) / ".cache" / "train.pt").is_file()
    decoding = "data_decoding_cached" if cached else "data_decoding_first_run"
    run_module.Tracker = timed_tracker(run_module.Tracker, clock)
    clock.wrap(run_module, "load_data", decoding)
    clock.wrap(run_module, "set_up", "set_up")
    clock.wrap(run_module, "train_epochs", "epochs", phase="epochs")
    clock.wrap(run_module, "explain_model", "explain_model", phase="explain")
    clock.wrap(run_module, "write_probes", "write_probes", phase="probes")
    clock.wrap(run_module, "finish", "finish", phase="finish")
    os.environ.pop("WANDB_SERVICE", None)  # as train/run.py's __main__ does
    status = run_module.main(run_args)
    stamps["returned"] = time.time()
    report.write_text(json.dumps({"stamps": stamps, "seconds": clock.seconds, "wandb": clock.wandb,
                                  "status": status}))
    return status


def phases(spawned: float, exited: float, child_report: dict, hooks_done: float) -> tuple[dict, dict]:
    """``wall_seconds`` and ``wandb_seconds`` from the parent's clock and the child's readings (``hooks_done``: when
    the child's exit hooks had run)."""
    s, w, stamps = defaultdict(float, child_report["seconds"]), defaultdict(float, child_report["wandb"]), \
        child_report["stamps"]
    decoding = next((k for k in s if k.startswith("data_decoding")), "data_decoding_cached")
    wall = {
        "startup_imports": stamps["imported"] - spawned,
        decoding: s[decoding],
        "setup": s["set_up"] - s[decoding] - w["init"],
        "wandb_init": w["init"],
        "epochs": s["epochs"],
        "explain": s["explain_model"] + s["write_probes"],
        "finish": s["finish"] - s["explain_model"] - s["write_probes"] - w["finish"],
        "wandb_finish": w["finish"],
        "exit_hooks": hooks_done - stamps["returned"],
        "interpreter_exit": exited - hooks_done,
    }
    wall["total"] = exited - spawned
    wall["other"] = wall["total"] - sum(v for k, v in wall.items() if k != "total")
    wandb = {key: w[key] for key in ("import", "init", "epoch_rows", "explain_row", "probes_row", "summary",
                                     "model_artifact", "finish")}
    wandb["total"] = sum(wandb.values())
    return wall, wandb


def copy_outputs(out_dir: Path, dest: Path) -> list[str]:
    """The run's small outputs (``.json``, ``.jsonl``, ``.png``, ``.npz``; not hidden, not under ``wandb/``) into
    ``dest``."""
    copied = []
    for path in sorted(out_dir.rglob("*")):
        relative = path.relative_to(out_dir)
        if (path.is_file() and path.suffix in OUTPUT_SUFFIXES and "wandb" not in relative.parts
                and not any(part.startswith(".") for part in relative.parts)):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / relative)
            copied.append(relative.as_posix())
    return copied


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(Path(argv[1]), argv[argv.index("--") + 1:])
    parser = common.Parser(__doc__)
    parser.add_argument("--work", required=True, type=common.new_folder,
                        help="a new folder: the run's out_dir and W&B folders go there")
    parser.add_argument("--copy_to", type=common.out_folder,
                        help="copy the run's small outputs (.json, .jsonl, .png, .npz) into this folder")
    parser.add_json(None)
    args = parser.parse(argv, rest="--")
    run_args = args.rest
    work = args.work.resolve()
    common.recipe_config(run_args)  # train/run.py's flags, checked by its own parser before the run
    results = common.Results(args.json, common.machine())
    out_dir = work / "run"
    report = work / "child.json"
    work.mkdir(parents=True, exist_ok=True)
    env = os.environ | {name: str(work / "wandb") for name in WANDB_FOLDERS}
    spawned = time.time()
    done = subprocess.run([sys.executable, __file__, "--child", str(report), "--", *run_args,
                           f"--out_dir={out_dir}"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    exited = time.time()
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0 or not report.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"error: train/run.py failed (exit {done.returncode}): {last}", file=sys.stderr)
        return 2 if done.returncode == 2 else 1
    exit_stamp = report.with_suffix(".exit")
    hooks_done = float(exit_stamp.read_text()) if exit_stamp.is_file() else exited
    wall, wandb = phases(spawned, exited, json.loads(report.read_text()), hooks_done)
    copied = copy_outputs(out_dir, Path(args.copy_to)) if args.copy_to else []
    summary = json.loads((out_dir / "summary.json").read_text())
    result = {"run_args": run_args, "wall_seconds": wall, "wandb_seconds": wandb, "summary": summary,
              "copied": copied, "copy_to": str(args.copy_to) if args.copy_to else None,
              **common.machine(summary.get("device", "cpu")), **common.stamp("bench/run_phases.py", argv)}
    print("wall seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in wall.items()))
    print("W&B seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in wandb.items()))
    return results.finish(result, measured=True)


if __name__ == "__main__":
    common.entry(main)
