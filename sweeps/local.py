"""Run a W&B sweep spec with no W&B server: W&B's own sweep engine proposes, ``train/run.py`` trains.

    python sweeps/local.py sweeps/lr.yaml --count 12 --data_dir ~/cifar10-jpeg
    python sweeps/local.py sweeps/lr.yaml --count 3 --seed 0 --epochs=2 --train_subset=2000 --explain_samples=0
    python sweeps/local.py my_grid.yaml --out_dir runs/sweeps/grid      # a grid runs until exhausted

The YAML is the one ``wandb sweep`` takes. Each trial is one ``train/run.py`` process started the way ``wandb agent``
starts it (the spec's ``command``, with ``${args}`` as ``--key=value``), followed by the extra ``--key=value`` flags
given here and ``--out_dir=OUT_DIR/TRIAL --run_name=TRIAL``. Its W&B run (offline unless ``--wandb_mode`` says
otherwise) is grouped under the sweep's name; ``wandb sync`` uploads it later.

- Proposals come from the ``sweeps`` package (``next_run``: bayes, random or grid) given every earlier trial;
  ``--seed`` makes them reproducible; a grid ends when it is exhausted, a spec's ``run_cap`` is honoured.
- ``early_terminate: hyperband`` is applied while a trial runs: its per-epoch rows are read from its W&B run as they
  are written (``wandb leet inspect --follow``) and handed to ``sweeps.stop_runs``; a trial it stops gets SIGTERM
  as under ``wandb agent`` (SIGKILL after ``WANDB_AGENT_KILL_DELAY``, 30 s), keeps its finished epochs and is marked
  ``stopped``.
- After every trial the leaderboard, best first by the spec's metric (the run's summary value, as W&B shows it), is
  printed and ``OUT_DIR/leaderboard.json`` rewritten: a list of the trials, best first, each with its rank, state,
  metric (and its per-epoch values), proposed config, W&B run folder and command. ``OUT_DIR/sweep.json`` holds the
  sweep: its name, method, metric and goal, spec and extra flags.
- An extra flag naming a swept parameter pins it (``--lr=0.1``): the parameter leaves the search. ``--seed``,
  ``--out_dir`` and ``--wandb_mode`` belong to the sweep; ``--run_name`` and ``--resume`` are per trial.
- Running again into an ``OUT_DIR`` holding the same sweep (same spec and extra flags) adds ``--count`` more trials.
- Ctrl-C stops the trial in progress (``interrupted``) and keeps every result. Bad input: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import queue
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

if __name__ == "__main__":  # `python sweeps/local.py`: import the repo's packages (sweeps/ itself holds no modules)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
from wandb.env import get_agent_kill_delay
from wandb.sdk.launch.sweeps import utils as agent_utils  # how `wandb agent` turns a proposal into an argv
from wandb.sdk.lib.runid import generate_id  # the ids wandb.init makes

from train.config import Config, ConfigError, ErrorExitParser, closest, parse_args, read_yaml
from train.tracking import epoch_row


def _import_engine() -> ModuleType:
    """W&B's sweep engine, the ``sweeps`` package of site-packages.

    This folder is importable as ``sweeps`` too, but only as a namespace portion (it has no ``__init__.py``), and a
    regular package wins over those whatever the order of ``sys.path``. The engine's pydantic models use v1-style
    config, which pydantic 2 warns about on import: noise for our users.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2", category=UserWarning)
        return importlib.import_module("sweeps")


sweeps = _import_engine()
REPO = Path(__file__).resolve().parents[1]
FLAGS = [f.name for f in dataclasses.fields(Config)]
PER_TRIAL = ("out_dir", "run_name", "resume")  # set by this script for each trial; never swept nor forwarded
METHODS = ("bayes", "random", "grid")
MAX_FAILED_IN_A_ROW = 3  # like `wandb agent --max-consecutive-failed-runs`: a broken setup fails every trial
POLL_SECONDS = 0.2


class SweepError(ValueError):
    """Bad spec or flags; the message is one line meant for the user."""


# ---- the spec ----------------------------------------------------------------------------------------------------

def epoch_metrics() -> list[str]:
    """The keys ``train/run.py`` logs once per epoch (a sweep metric must be one: hyperband counts its rows)."""
    return list(epoch_row(0, defaultdict(float), defaultdict(float)))


def load_spec(path: str) -> dict[str, Any]:
    """Read a sweep YAML into a dict, refusing what is missing, unreadable, malformed or not a mapping."""
    try:
        spec = read_yaml(path, "sweep spec")
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    if not isinstance(spec, dict) or not spec:
        raise SweepError(f"sweep spec {path!r} must be a YAML mapping (program, method, metric, parameters, ...)")
    return spec


def check_spec(spec: dict[str, Any], path: str) -> dict[str, Any]:
    """Validate a spec as W&B does, then what a local sweep of ``train/run.py`` needs; return it with W&B's defaults.

    The engine's own validation (``SweepConfig``) silently drops nested parameters, so they are refused here, and the
    engine is then called with ``validate=False`` on the returned, already validated config.
    """
    try:
        violations = sweeps.schema_violations_from_proposed_config(spec)
    except ValueError as exc:
        raise SweepError(f"{path}: {exc}") from None
    if violations:
        unique = dict.fromkeys(" ".join(v.split()) for v in violations)  # the engine reports some twice
        raise SweepError(f"{path} is not a valid W&B sweep spec: " + "; ".join(unique))
    if spec.get("method") not in METHODS:
        raise SweepError(f"{path}: method {spec.get('method')!r} cannot run locally; use one of {', '.join(METHODS)}")
    for name, param in spec["parameters"].items():
        if "parameters" in param:
            raise SweepError(f"{path}: parameter {name!r} is nested; train/run.py flags are flat")
        if name not in FLAGS:
            raise SweepError(f"{path}: parameter {name!r} is not a train/run.py flag{closest(name, FLAGS)}")
        if name in PER_TRIAL + ("wandb_mode",):
            raise SweepError(f"{path}: parameter {name!r} cannot be swept; the sweep sets it for every trial")
    if "metric" not in spec:
        raise SweepError(f"{path}: a local sweep ranks its trials by `metric`; add e.g. "
                         f"metric: {{name: val/acc, goal: maximize}}")
    keys = epoch_metrics()
    if spec["metric"]["name"] not in keys:
        match = difflib.get_close_matches(spec["metric"]["name"], keys, n=1)
        hint = f" (did you mean {match[0]}?)" if match else f" (one of {', '.join(keys)})"
        raise SweepError(f"{path}: metric {spec['metric']['name']!r} is not logged per epoch by train/run.py{hint}")
    command = [str(c) for c in spec.get("command") or agent_utils.DEFAULT_SWEEP_COMMAND]
    if "${args}" not in command:
        raise SweepError(f"{path}: the command must pass the parameters as ${{args}} (--key=value), as "
                         f"[${{env}}, ${{interpreter}}, ${{program}}, ${{args}}] does")
    filled = sweeps.SweepConfig(spec)  # fills W&B's defaults: metric goal, hyperband eta and strict, distributions
    try:  # the engine's own checks that only show on use (grid over a continuous range, hyperband with no bands)
        sample = sweeps.next_run(filled, [], validate=False)
        if "early_terminate" in filled:
            sweeps.stop_runs(filled, [], validate=False)
    except (ValueError, TypeError) as exc:
        raise SweepError(f"{path}: {' '.join(str(exc).split())}") from None
    try:  # e.g. a uniform distribution over an int flag: every trial would fail
        parse_args(agent_utils.create_sweep_command_args({"args": sample.config if sample else {}})["args"])
    except ConfigError as exc:
        raise SweepError(f"{path}: the engine proposes values train/run.py refuses ({exc}); for an int flag use "
                         f"int_uniform or values") from None
    return filled


def resolve_program(program: str | None) -> str:
    """The spec's ``program``, relative to the current folder as for ``wandb agent``, else to the repo root."""
    if not program:
        raise SweepError("the sweep spec needs `program: train/run.py`")
    if Path(program).is_file():
        return program
    if (REPO / program).is_file():
        return str(REPO / program)
    raise SweepError(f"program {program!r} of the sweep spec does not exist (relative to {Path.cwd()} or {REPO})")


# ---- flags forwarded to every trial ------------------------------------------------------------------------------

def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """``--key=value`` / ``--key value`` flags for every trial, as ``{key: value}``; names checked against run.py's."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise SweepError(f"unexpected argument {token!r} (flags for the trials look like --key=value)")
        name, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 == len(tokens) or tokens[i + 1].startswith("--"):
                raise SweepError(f"flag --{name} needs a value (--{name}=VALUE)")
            i += 1
            value = tokens[i]
        key = name.replace("-", "_")
        if key not in FLAGS and key != "config":
            raise SweepError(f"unknown flag --{name}{closest(name, FLAGS + ['count'])}")
        if key in PER_TRIAL:
            raise SweepError(f"--{key} is set for each trial by sweeps/local.py (the sweep's folder is --out_dir)")
        overrides[key] = value
        i += 1
    if overrides:
        parse_args([f"--{k}={v}" for k, v in overrides.items()])  # bad values fail now, not in every trial
    return overrides


def pin_parameters(spec: dict[str, Any], overrides: dict[str, str]) -> list[str]:
    """Turn swept parameters that an override names into constants (typed as run.py parses them); returns them."""
    pinned = [k for k in overrides if k in spec["parameters"]]
    if pinned:
        config, _ = parse_args([f"--{k}={overrides[k]}" for k in pinned])
        for key in pinned:
            spec["parameters"][key] = {"value": getattr(config, key)}
            del overrides[key]
    return pinned


# ---- proposals -------------------------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """Numpy scalars (the engine's proposals) as plain Python, so they print, hash and serialize like YAML values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def propose(spec: dict[str, Any], runs: list[sweeps.SweepRun], seed: int | None, index: int) -> dict[str, Any] | None:
    """The engine's next proposal as ``{flag: value}`` (None once a grid is exhausted).

    With a seed, both generators the engine draws from (``random`` for random search, numpy for bayes) are reseeded
    from (seed, trial index), so a sweep continued later proposes what one longer sweep would have.
    """
    if seed is not None:
        random.seed(f"{seed}:{index}")
        np.random.seed([seed, index])
    run = sweeps.next_run(spec, runs, validate=False)
    return None if run is None else {name: plain(entry["value"]) for name, entry in run.config.items()}


def trial_argv(spec: dict[str, Any], program: str, params: dict[str, Any], extra: list[str]) -> list[str]:
    """The argv ``wandb agent`` would run for ``params``, built with the agent's own helpers, ``extra`` after ${args}.

    As in the agent, ``${env}`` is ``/usr/bin/env`` (nothing on Windows); ``${interpreter}`` is this Python (the
    agent runs ``python`` from PATH).
    """
    formats = agent_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros = {**formats, "env": ["/usr/bin/env"] if os.name != "nt" else [], "interpreter": [sys.executable],
              "program": [program], "args": formats["args"] + extra}
    argv: list[str] = []
    for chunk in agent_utils.create_sweep_command(list(spec.get("command") or agent_utils.DEFAULT_SWEEP_COMMAND)):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


# ---- trials ----------------------------------------------------------------------------------------------------

@dataclass
class Trial:
    """One trial of the sweep, as ``leaderboard.json`` stores it."""

    name: str
    index: int
    config: dict[str, Any]  # the proposed values, one per parameter of the spec
    state: str = "running"  # running, finished, stopped (hyperband), failed, interrupted (Ctrl-C)
    metric: float | None = None  # the run's summary value of the sweep metric (its last epoch's value)
    metric_history: list[float] = field(default_factory=list)  # one value per epoch
    epochs: int = 0
    stop_reason: str = ""  # the engine's hyperband line for a stopped trial
    returncode: int | None = None
    seconds: float = 0.0
    out_dir: str = ""
    wandb_run_id: str = ""
    wandb_run_dir: str | None = None
    command: list[str] = field(default_factory=list)

    def sweep_run(self, metric: str) -> sweeps.SweepRun:
        """This trial as the engine sees a run: hyperband reads ``history``, bayes the extremum over it and summary.

        ``history`` holds exactly one row per epoch: hyperband's bands count rows holding the metric, so a row
        logged twice, or an extra final row carrying the metric, would shift every band.
        """
        state = {"finished": sweeps.RunState.finished, "stopped": sweeps.RunState.finished,  # its epochs are real
                 "failed": sweeps.RunState.failed, "running": sweeps.RunState.running}[self.state]
        return sweeps.SweepRun(name=self.name, state=state, config={k: {"value": v} for k, v in self.config.items()},
                               history=[{metric: v} for v in self.metric_history],
                               summary_metrics={} if self.metric is None else {metric: self.metric},
                               stopped=self.state == "stopped")


def find_run_dir(run_id: str) -> Path | None:
    """The W&B run folder of ``run_id`` under ``$WANDB_DIR`` (or the current folder), once wandb has made it."""
    root = Path(os.environ.get("WANDB_DIR") or ".")
    found = sorted(root.glob(f"*wandb/*run-*-{run_id}"))
    return found[-1] if found else None


def wandb_cli(*args: str, timeout: float = 120) -> str:
    """Run the ``wandb`` CLI of this Python (W&B's own reader of run files) and return its stdout."""
    return subprocess.run([sys.executable, "-m", "wandb", *args], capture_output=True, text=True, check=True,
                          timeout=timeout).stdout


def epoch_values(history: list[dict[str, Any]], metric: str) -> list[float]:
    """One metric value per epoch from a run's history rows: rows without the metric (the explain step's) are
    skipped, and an epoch logged twice counts once (its last row)."""
    by_epoch: dict[Any, float] = {}
    for row in history:
        if metric in row and "epoch" in row:
            by_epoch[row["epoch"]] = row[metric]
    return list(by_epoch.values())


class RunFollower:
    """Streams the history rows of a trial's W&B run while it runs (``wandb leet inspect --follow --json``)."""

    def __init__(self, run_id: str):
        self.rows: queue.Queue[dict[str, Any]] = queue.Queue()
        self._run_id = run_id
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        run_dir = None
        while run_dir is None and not self._done.wait(0.5):
            run_dir = find_run_dir(self._run_id)
        with self._lock:
            if self._done.is_set():
                return
            # its own session: the CLI runs wandb-core as a child, and stop() must end both
            self._proc = subprocess.Popen([sys.executable, "-m", "wandb", "leet", "inspect", "--follow", "--json",
                                           str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                          start_new_session=True)
        for line in self._proc.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") == "history":
                self.rows.put(record["history"]["item"])

    def new_rows(self) -> list[dict[str, Any]]:
        """The rows read since the last call."""
        rows = []
        while not self.rows.empty():
            rows.append(self.rows.get_nowait())
        return rows

    def stop(self) -> None:
        with self._lock:
            self._done.set()
            if self._proc is not None and self._proc.poll() is None:
                if hasattr(os, "killpg"):
                    os.killpg(self._proc.pid, signal.SIGTERM)
                else:
                    self._proc.terminate()
        self._thread.join(timeout=10)


def stop_line(spec: dict[str, Any], earlier: list[Trial], trial: Trial) -> str | None:
    """Hyperband's verdict on the running trial: the engine's explanation when it says stop, else None."""
    metric = spec["metric"]["name"]
    running = trial.sweep_run(metric)
    stopped = sweeps.stop_runs(spec, [t.sweep_run(metric) for t in earlier] + [running], validate=False)
    if any(run.name == trial.name for run in stopped):
        return " ".join(running.early_terminate_info["lines"][-1].split())
    return None


def end_process(proc: subprocess.Popen, sig: int, kill_after: float) -> None:
    """Send ``sig`` and wait for the process to end; SIGKILL after ``kill_after`` seconds or on a second Ctrl-C."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=kill_after)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


def run_trial(trial: Trial, env: dict[str, str], spec: dict[str, Any], earlier: list[Trial]) -> None:
    """Run one trial to its end, applying hyperband on its epochs as they are logged; fills in the trial's results.

    Ctrl-C (KeyboardInterrupt) stops the trial as hyperband does, records it as interrupted, and is raised again.
    """
    kill_delay = get_agent_kill_delay(30)
    start = time.monotonic()
    # its own session, so a Ctrl-C reaches the trial once, from here, and not twice (terminal + here)
    proc = subprocess.Popen(trial.command, env=env, start_new_session=True)
    follower = RunFollower(trial.wandb_run_id) if "early_terminate" in spec else None
    rows: list[dict[str, Any]] = []
    stop_sent = None
    try:
        while proc.poll() is None:
            fresh = follower.new_rows() if follower else []
            if fresh and stop_sent is None:
                rows += fresh
                trial.metric_history = epoch_values(rows, spec["metric"]["name"])
                trial.stop_reason = stop_line(spec, earlier, trial) or ""
                if trial.stop_reason:
                    print(f"[{trial.name}] hyperband stops it after epoch {len(trial.metric_history)}: "
                          f"{trial.stop_reason}", flush=True)
                    proc.send_signal(signal.SIGTERM)  # what `wandb agent` does; train/run.py then ends cleanly
                    stop_sent = time.monotonic()
                    trial.state = "stopped"
            if stop_sent is not None and time.monotonic() - stop_sent > kill_delay:
                proc.kill()
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        trial.state = "interrupted"
        end_process(proc, signal.SIGTERM, kill_delay)  # not SIGINT: a trial may inherit it ignored (`cmd &`)
        raise
    except Exception:  # never leave a trial running behind the sweep
        end_process(proc, signal.SIGTERM, kill_delay)
        raise
    finally:
        if follower:
            follower.stop()
        trial.returncode = proc.wait()
        trial.seconds = round(time.monotonic() - start, 1)
        collect_results(trial, spec["metric"]["name"])


def collect_results(trial: Trial, metric: str) -> None:
    """Read the trial's W&B run back (history and summary) and settle its state."""
    summary_file = Path(trial.out_dir) / "summary.json"
    run_dir = find_run_dir(trial.wandb_run_id)
    if run_dir is None and summary_file.is_file():  # wandb fell back to another folder; run.py knows which
        logged = json.loads(summary_file.read_text()).get("wandb_run_dir")
        run_dir = Path(logged) if logged else None
    if run_dir is not None and run_dir.is_dir():
        trial.wandb_run_dir = str(run_dir.resolve())
        try:
            records = [json.loads(line) for line in wandb_cli("leet", "inspect", "--json", str(run_dir)).splitlines()
                       if line.strip()]
            summary = json.loads(wandb_cli("leet", "inspect", "--summary", "--json", str(run_dir)))["summary"]
        except (subprocess.SubprocessError, json.JSONDecodeError, KeyError) as exc:
            print(f"warning: cannot read the W&B run of {trial.name} ({exc})", file=sys.stderr)
        else:
            trial.metric_history = epoch_values([r["history"]["item"] for r in records if r["type"] == "history"],
                                                metric)
            value = summary.get(metric, trial.metric_history[-1] if trial.metric_history else None)
            trial.metric = value if isinstance(value, int | float) else None
    trial.epochs = len(trial.metric_history)
    if trial.state == "running":
        trial.state = "finished" if trial.returncode == 0 and summary_file.is_file() else "failed"


# ---- the leaderboard -------------------------------------------------------------------------------------------

def ranked(trials: list[Trial], goal: str) -> list[Trial]:
    """Best first by the metric (goal-aware); trials without a metric last; ties in trial order."""
    sign = -1 if goal == "maximize" else 1
    return sorted(trials, key=lambda t: (t.metric is None, sign * (t.metric or 0.0), t.index))


def _fmt(value: Any, digits: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, digits)
    return str(value)


def leaderboard_table(trials: list[Trial], spec: dict[str, Any], columns: list[str]) -> str:
    """The leaderboard as aligned text: rank, trial, state, metric, epochs, then the searched parameters."""
    metric, goal = spec["metric"]["name"], spec["metric"]["goal"]
    header = ["rank", "trial", "state", metric, "epochs", *columns]
    lines = [header] + [[str(rank), t.name, t.state, _fmt(t.metric, ".4f"), str(t.epochs),
                         *(_fmt(t.config.get(c)) for c in columns)] for rank, t in enumerate(ranked(trials, goal), 1)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file beside it, then a rename (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def leaderboard(trials: list[Trial], goal: str) -> list[dict[str, Any]]:
    """``leaderboard.json``: every trial, best first, with its rank."""
    return [{"rank": rank, **dataclasses.asdict(t)} for rank, t in enumerate(ranked(trials, goal), 1)]


def earlier_trials(out_dir: Path, sweep: dict[str, Any]) -> list[Trial]:
    """The trials already in ``out_dir`` when it holds the same sweep (continuing it); refuses any other sweep."""
    stored_file, board = out_dir / "sweep.json", out_dir / "leaderboard.json"
    if not stored_file.is_file():
        if board.exists():
            raise SweepError(f"--out_dir {str(out_dir)!r} holds a leaderboard.json but no sweep.json; choose another "
                             f"--out_dir")
        return []
    try:
        stored = json.loads(stored_file.read_text())
        entries = json.loads(board.read_text()) if board.is_file() else []
    except (OSError, json.JSONDecodeError) as exc:
        raise SweepError(f"--out_dir {str(out_dir)!r} cannot be read ({exc}); choose another --out_dir") from None
    for key in ("spec_config", "overrides"):
        if stored.get(key) != json.loads(json.dumps(sweep[key], default=str)):
            raise SweepError(f"--out_dir {str(out_dir)!r} holds another sweep (its {key.replace('_', ' ')} "
                             f"differs); choose another --out_dir")
    names = {f.name for f in dataclasses.fields(Trial)}
    return sorted((Trial(**{k: v for k, v in e.items() if k in names}) for e in entries), key=lambda t: t.index)


# ---- main ------------------------------------------------------------------------------------------------------

def _parser() -> ErrorExitParser:
    parser = ErrorExitParser(prog="sweeps/local.py", allow_abbrev=False,
                             description="Run a W&B sweep spec locally, no W&B server: proposals from W&B's sweep "
                                         "engine, each trial a train/run.py process with an offline W&B run. "
                                         "Other --key=value flags go to every trial.")
    parser.add_argument("spec", help="the sweep YAML, e.g. sweeps/lr.yaml")
    parser.add_argument("--count", type=int, help="trials to run (default: a grid's every point; needed otherwise)")
    parser.add_argument("--out_dir", "--out-dir", default="", help="sweep folder (default runs/sweeps/<sweep name>)")
    parser.add_argument("--seed", type=int, help="seed of the proposals (default: fresh randomness)")
    parser.add_argument("--wandb_mode", "--wandb-mode", default="offline", choices=("offline", "online", "auto"),
                        help="W&B mode of the trials (default offline)")
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: check everything, then run the trials; one ``error:`` line and exit status 2 on bad input."""
    try:
        args, rest = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
        if not hasattr(sweeps, "next_run"):
            raise SweepError("W&B's sweep engine is not installed (pip install sweeps)")
        if args.count is not None and args.count < 1:
            raise SweepError(f"--count must be >= 1, got {args.count}")
        if args.seed is not None and args.seed < 0:
            raise SweepError(f"--seed must be >= 0, got {args.seed}")
        raw = load_spec(args.spec)
        given = parse_overrides(rest)
        overrides = dict(given)
        spec = json.loads(json.dumps(raw, default=str))  # plain containers the pinning may edit
        pinned = pin_parameters(spec, overrides) if isinstance(spec.get("parameters"), dict) else []
        spec = check_spec(spec, args.spec)
        program = resolve_program(spec.get("program"))
        if args.count is None and spec["method"] != "grid":
            raise SweepError(f"--count N is needed: a {spec['method']} sweep never ends by itself")
    except (SweepError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    name = re.sub(r"[^\w.-]+", "-", str(spec.get("name") or Path(args.spec).stem))
    out_dir = Path(args.out_dir or Path("runs") / "sweeps" / name)
    board = out_dir / "leaderboard.json"
    sweep = {"sweep": name, "spec": args.spec, "method": spec["method"], "metric": dict(spec["metric"]),
             "seed": args.seed, "spec_config": raw, "overrides": given}
    try:
        trials = earlier_trials(out_dir, sweep)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "sweep.json", sweep)
    except (SweepError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # ---- the sweep -----------------------------------------------------------------------------------------------
    searched = [k for k, p in spec["parameters"].items() if "value" not in p] or list(spec["parameters"])
    extra = [f"--{k}={v}" for k, v in overrides.items()]
    for key in ("project", "entity"):  # the sweep's W&B project, as an agent's runs get it
        if spec.get(key) and f"wandb_{key}" not in overrides and f"wandb_{key}" not in spec["parameters"]:
            extra.append(f"--wandb_{key}={spec[key]}")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")}
    env["WANDB_RUN_GROUP"] = name
    env.setdefault("WANDB__TRANSACTION_LOG_FLUSH_INTERVAL", "0.2")  # default 15 s: hyperband would see epochs late
    early = f"; hyperband {spec['early_terminate']}" if "early_terminate" in spec else ""
    print(f"sweep {name}: {spec['method']} over {', '.join(searched)}; {spec['metric']['name']} "
          f"({spec['metric']['goal']}){early}; {len(trials)} earlier trials; {out_dir}/leaderboard.json", flush=True)
    if pinned:
        print(f"pinned by the extra flags (not searched): {', '.join(pinned)}", flush=True)
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's choice stands
            signal.signal(sig, _raise_interrupt)  # stop like Ctrl-C: the trial ends cleanly, results are kept

    status, failed_in_a_row, started = 0, 0, 0
    try:
        while args.count is None or started < args.count:
            if spec.get("run_cap") and len(trials) >= spec["run_cap"]:
                print(f"run_cap {spec['run_cap']} reached", flush=True)
                break
            engine_trials = [t for t in trials if t.state != "interrupted"]
            index = max((t.index for t in trials), default=0) + 1
            while (out_dir / f"{name}-{index:03d}").exists():  # never reuse a trial folder
                index += 1
            params = propose(spec, [t.sweep_run(spec["metric"]["name"]) for t in engine_trials], args.seed, index)
            if params is None:
                print(f"grid exhausted after {len(engine_trials)} trials", flush=True)
                break
            trial = Trial(name=f"{name}-{index:03d}", index=index, config=params, wandb_run_id=generate_id(),
                          out_dir=str((out_dir / f"{name}-{index:03d}").resolve()))
            trial.command = trial_argv(spec, program, params, extra + [
                f"--out_dir={trial.out_dir}", f"--run_name={trial.name}", f"--wandb_mode={args.wandb_mode}"])
            print(f"\n[{trial.name}] " + "  ".join(f"{k}={_fmt(v)}" for k, v in params.items() if k in searched)
                  + f"\n$ {shlex.join(trial.command)}", flush=True)
            trials.append(trial)
            started += 1
            run_trial(trial, {**env, "WANDB_RUN_ID": trial.wandb_run_id}, spec, engine_trials)
            write_json(board, leaderboard(trials, spec["metric"]["goal"]))
            print(f"\n[{trial.name}] {trial.state} after {trial.seconds:.0f}s: {spec['metric']['name']} "
                  f"{_fmt(trial.metric, '.4f')}\n{leaderboard_table(trials, spec, searched)}", flush=True)
            failed_in_a_row = failed_in_a_row + 1 if trial.state == "failed" else 0
            if failed_in_a_row == MAX_FAILED_IN_A_ROW:
                print(f"error: {MAX_FAILED_IN_A_ROW} trials in a row failed (see their output above); sweep stopped",
                      file=sys.stderr)
                status = 1
                break
    except KeyboardInterrupt:
        if trials:
            write_json(board, leaderboard(trials, spec["metric"]["goal"]))
        print(f"\ninterrupted: {len(trials)} trials kept in {board}", file=sys.stderr)
        return 130
    best = next((t for t in ranked(trials, spec["metric"]["goal"]) if t.metric is not None), None)
    if best is not None:
        print(f"\nbest: {best.name} {spec['metric']['name']} {best.metric:.4f}  "
              + "  ".join(f"{k}={_fmt(v)}" for k, v in best.config.items() if k in searched)
              + f"\nleaderboard: {board}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
