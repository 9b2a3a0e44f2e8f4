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
- ``early_terminate: hyperband`` is applied while a trial runs: its per-epoch rows are read from its
  ``metrics.jsonl`` as they are written and handed to ``sweeps.stop_runs``; a trial it stops gets SIGTERM
  as under ``wandb agent`` (SIGKILL after ``WANDB_AGENT_KILL_DELAY``, 30 s), keeps its finished epochs and is marked
  ``stopped``.
- After every trial the leaderboard, best first by the spec's metric (the run's summary value, as W&B shows it), is
  printed and ``OUT_DIR/leaderboard.json`` rewritten: a list of the trials, best first, each with its rank, state,
  metric (and its per-epoch values), proposed config, W&B run folder and command. ``OUT_DIR/sweep.json`` holds the
  sweep: its name, method, metric and goal, spec and extra flags.
- An extra flag naming a swept parameter pins it (``--lr=0.1``): the parameter leaves the search. ``--seed``,
  ``--out_dir``, ``--wandb_mode`` and ``--keep_checkpoints`` (default none: trials keep no weights) belong to the
  sweep; ``--run_name`` and ``--resume`` are per trial.
- Running again into an ``OUT_DIR`` holding the same sweep (same spec and extra flags) adds ``--count`` more trials.
- Ctrl-C stops the trial in progress (``interrupted``) and keeps every result (exit status 130; 0 for SIGTERM, as
  ``train/run.py``); during start-up it ends with one ``stopped:`` line.
- Bad input: one ``error:`` line, exit 2 — a spec of any other YAML shape, and any value a parameter can take that
  ``train/run.py`` refuses: each of ``values``, a ``value``, both ends of a range (as values, however the distribution
  maps them), checked up front with the extra flags. A sweep whose trials all failed exits 1 with an ``error:`` line,
  as does one stopped after ``MAX_FAILED_IN_A_ROW`` failures in a row.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

if __name__ == "__main__":  # `python sweeps/local.py`
    def _stopped_while_starting(signum: int, frame: object) -> None:
        print(f"stopped: {signal.Signals(signum).name} during start-up; no trial was started", file=sys.stderr)
        sys.stderr.flush()  # then exit at once: a library import may swallow SystemExit; nothing is open yet
        os._exit(130 if signum == signal.SIGINT else 0)

    for _sig in (signal.SIGINT, signal.SIGTERM):  # the imports below take seconds: a stop meanwhile ends quietly
        if signal.getsignal(_sig) is not signal.SIG_IGN:  # nohup, `cmd &`: an ignored signal stays ignored
            signal.signal(_sig, _stopped_while_starting)
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repo's packages (sweeps/ holds no modules)

import numpy as np
from wandb.env import get_agent_kill_delay
from wandb.sdk.launch.sweeps import utils as agent_utils  # how `wandb agent` turns a proposal into an argv
from wandb.sdk.lib.runid import generate_id  # the ids wandb.init makes

from train.config import (
    KEEP_CHECKPOINTS,
    Config,
    ConfigError,
    build_parser,
    closest,
    coerce,
    one_line,
    parse_args,
    parse_flags,
    read_yaml,
    train_parser,
)
from train.files import write_json
from train.stops import Stopped, exit_status, stops_deferred, stops_raise
from train.tracking import METRICS_FILE, check_wandb_environment, epoch_row, read_metrics


def _import_engine() -> ModuleType:
    """W&B's sweep engine, the ``sweeps`` package of site-packages.

    This folder is importable as ``sweeps`` too, but only as a namespace portion (it has no ``__init__.py``), and a
    regular package wins over those whatever the order of ``sys.path``. The engine's pydantic models use v1-style
    config, which pydantic 2 warns about on import: noise for our users.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2", category=UserWarning)
        importlib.import_module("sweeps.params")  # its search spaces (HyperParameter), which the package imports late
        return importlib.import_module("sweeps")


sweeps = _import_engine()
Space = sweeps.params.HyperParameter  # one parameter's search space, with its type and the engine's own ppf
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


def _shape(value: Any) -> str:
    """What a YAML value is, in words: ``a list``, ``null``, ..."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), type(value).__name__)


def check_shape(spec: dict[str, Any], path: str) -> None:
    """Refuse ``parameters`` that are not a mapping of names to mappings: W&B's schema check iterates them as one
    before it checks (a list there is an AttributeError inside the engine)."""
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        got = "an empty mapping" if params == {} else _shape(params)
        raise SweepError(f"{path}: `parameters` must be a mapping of train/run.py flags to their search spaces (e.g. "
                         f"parameters: {{lr: {{values: [0.1, 0.2]}}}}), got {got}")
    for name, param in params.items():
        if not isinstance(param, dict):
            raise SweepError(f"{path}: parameter {name!r} must be a mapping ({{values: [...]}}, {{value: ...}} or "
                             f"{{min: ..., max: ...}}), got {_shape(param)}")


def check_spec(spec: dict[str, Any], path: str, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate a spec as W&B does, then what a local sweep of ``train/run.py`` needs; return it with W&B's defaults.

    The engine's own validation (``SweepConfig``) silently drops nested parameters, so they are refused here, and the
    engine is then called with ``validate=False`` on the returned, already validated config. Every value a parameter
    can take is checked as ``train/run.py`` checks its flags, with ``overrides`` (the trials' extra flags) beside it.
    """
    check_shape(spec, path)
    try:
        violations = sweeps.schema_violations_from_proposed_config(spec)
    except (ValueError, TypeError) as exc:
        raise SweepError(f"{path}: {' '.join(str(exc).split())}") from None
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
        if name in PER_TRIAL + ("wandb_mode", "keep_checkpoints"):
            raise SweepError(f"{path}: parameter {name!r} cannot be swept; the sweep sets it for every trial")
    if "metric" not in spec:
        raise SweepError(f"{path}: a local sweep ranks its trials by `metric`; add e.g. "
                         f"metric: {{name: val/acc, goal: maximize}}")
    keys = epoch_metrics()
    if spec["metric"]["name"] not in keys:
        hint = closest(spec["metric"]["name"], keys, prefix="") or f" (one of {', '.join(keys)})"
        raise SweepError(f"{path}: metric {spec['metric']['name']!r} is not logged per epoch by train/run.py{hint}")
    command = [str(c) for c in spec.get("command") or agent_utils.DEFAULT_SWEEP_COMMAND]
    if "${args}" not in command:
        raise SweepError(f"{path}: the command must pass the parameters as ${{args}} (--key=value), as "
                         f"[${{env}}, ${{interpreter}}, ${{program}}, ${{args}}] does")
    filled = sweeps.SweepConfig(spec)  # fills W&B's defaults: hyperband eta and strict, distributions
    filled["metric"] = {"goal": "minimize", **filled["metric"]}  # W&B's default goal, which SweepConfig leaves out
    check_values(filled, path, overrides or {})
    try:  # the engine's own checks that only show on use (grid over a continuous range, hyperband with no bands)
        sample = sweeps.next_run(filled, [], validate=False)
        if "early_terminate" in filled:
            sweeps.stop_runs(filled, [], validate=False)
    except (ValueError, TypeError) as exc:
        raise SweepError(f"{path}: {' '.join(str(exc).split())}") from None
    except (KeyError, IndexError, ArithmeticError) as exc:  # what the engine fails with on a spec it cannot use
        raise SweepError(f"{path}: W&B's sweep engine cannot run this spec ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())})") from None
    try:  # e.g. a uniform distribution over an int flag: every trial would fail
        parse_args(agent_utils.create_sweep_command_args({"args": plain(sample.config) if sample else {}})["args"])
    except ConfigError as exc:
        raise SweepError(f"{path}: the engine proposes values train/run.py refuses ({exc}); for an int flag use "
                         f"int_uniform or values") from None
    return filled


# The engine's distributions without a min and a max (normal, log-normal, beta) have no ends to check: the values
# between which all but 1 in 1,000 of their proposals fall are checked instead.
UNBOUNDED = {Space.NORMAL, Space.Q_NORMAL, Space.LOG_NORMAL, Space.Q_LOG_NORMAL, Space.BETA, Space.Q_BETA}


def possible_values(name: str, param: dict[str, Any]) -> list[tuple[str, Any]]:
    """The values of a (filled) parameter that decide whether every trial can run, each with what it is: a
    ``value``, every one of ``values``, both ends of a range — in value space, as the engine's own ``ppf`` maps them
    (``log_uniform``'s ends are ``exp(min)`` and ``exp(max)``)."""
    space = Space(name, param)
    if space.type == Space.CONSTANT:
        return [("value", space.config["value"])]
    if space.type in (Space.CATEGORICAL, Space.CATEGORICAL_PROB):
        return [("value", value) for value in space.config["values"]]
    if space.type == Space.INT_UNIFORM:  # scipy's discrete ppf(0) is min - 1
        return [("min", space.config["min"]), ("max", space.config["max"])]
    if space.type in UNBOUNDED:
        return [("its 0.1 % quantile", plain(space.ppf(0.001))), ("its 99.9 % quantile", plain(space.ppf(0.999)))]
    low, high = sorted(plain([space.ppf(0.0), space.ppf(1.0)]))
    return [("the range's lower end", low), ("the range's upper end", high)]


def check_values(spec: dict[str, Any], path: str, overrides: dict[str, str]) -> None:
    """Refuse a parameter that can take a value ``train/run.py`` refuses (a trial would fail on it, perhaps hours into
    the sweep): each value is parsed with the trials' extra flags, as the agent's ``${args}`` passes it."""
    extra = [f"--{key}={value}" for key, value in overrides.items()]
    for name, param in spec["parameters"].items():
        for what, value in possible_values(name, param):
            argv = agent_utils.create_sweep_command_args({"args": {name: {"value": value}}})["args"]
            try:
                parse_args(extra + argv)
            except ConfigError as exc:
                shown = format(value, ".6g") if isinstance(value, float) and len(repr(value)) > 12 else repr(value)
                hint = "; for an int flag use int_uniform or values" if "expects int" in str(exc) else ""
                raise SweepError(f"{path}: parameter {name!r}: {what} {shown} is refused by train/run.py ({exc}){hint}"
                                 ) from None


def resolve_program(program: str | None) -> str:
    """The spec's ``program``, relative to the current folder as for ``wandb agent``, else to the repo root."""
    if not program:
        raise SweepError("the sweep spec needs `program: train/run.py`")
    if Path(program).is_file():
        return program
    if (REPO / program).is_file():
        return str(REPO / program)
    places = " or ".join(dict.fromkeys(str(p) for p in (Path.cwd().resolve(), REPO.resolve())))
    raise SweepError(f"program {program!r} of the sweep spec does not exist (relative to {places})")


# ---- flags forwarded to every trial ------------------------------------------------------------------------------

def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """Flags for every trial, parsed as ``train/run.py`` parses them, as ``{key: value}`` (the text given)."""
    overrides = parse_flags(train_parser(), tokens)
    for key in PER_TRIAL:
        if key in overrides:
            raise SweepError(f"--{key} is set for each trial by sweeps/local.py (the sweep's folder is --out_dir)")
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


def epoch_values(history: list[dict[str, Any]], metric: str) -> list[float]:
    """One metric value per epoch from a run's history rows: rows without the metric (the explain step's) are
    skipped, and an epoch logged twice counts once (its last row)."""
    by_epoch: dict[Any, float] = {}
    for row in history:
        if metric in row and "epoch" in row:
            by_epoch[row["epoch"]] = row[metric]
    return list(by_epoch.values())


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
    except (subprocess.TimeoutExpired, Stopped):
        proc.kill()
        proc.wait()


def run_trial(trial: Trial, env: dict[str, str], spec: dict[str, Any], earlier: list[Trial]) -> None:
    """Run one trial to its end, applying hyperband on its epochs as they are logged; fills in the trial's results.

    The trial's epoch rows are read from its ``metrics.jsonl`` (one line per epoch, written as the epoch ends). A
    stop of the sweep (Ctrl-C, SIGTERM) stops the trial as hyperband does, records it as interrupted, and is raised
    again.
    """
    kill_delay = get_agent_kill_delay(30)
    metric, metrics_file = spec["metric"]["name"], Path(trial.out_dir) / METRICS_FILE
    start = time.monotonic()
    proc, stop_sent = None, None
    try:
        with stops_deferred():  # a stop while the trial starts lands once `proc` is known: the trial is ended too
            # its own session, so a Ctrl-C reaches the trial once, from here, and not twice (terminal + here)
            proc = subprocess.Popen(trial.command, env=env, start_new_session=True)
        while proc.poll() is None:
            history = epoch_values(read_metrics(metrics_file), metric) if "early_terminate" in spec else []
            if len(history) > len(trial.metric_history) and stop_sent is None:
                trial.metric_history = history
                trial.stop_reason = stop_line(spec, earlier, trial) or ""
                if trial.stop_reason:
                    print(f"[{trial.name}] hyperband stops it after epoch {len(history)}: {trial.stop_reason}",
                          flush=True)
                    proc.send_signal(signal.SIGTERM)  # what `wandb agent` does; train/run.py then ends cleanly
                    stop_sent = time.monotonic()
                    trial.state = "stopped"
            if stop_sent is not None and time.monotonic() - stop_sent > kill_delay:
                proc.kill()
            time.sleep(POLL_SECONDS)
    except Stopped:
        trial.state = "interrupted"
        if proc is not None:
            end_process(proc, signal.SIGTERM, kill_delay)  # not SIGINT: a trial may inherit it ignored (`cmd &`)
        raise
    except Exception:  # never leave a trial running behind the sweep
        if proc is not None:
            end_process(proc, signal.SIGTERM, kill_delay)
        raise
    finally:
        trial.returncode = proc.wait() if proc is not None else None
        trial.seconds = round(time.monotonic() - start, 1)
        collect_results(trial, metric)


def discard_checkpoints(trial: Trial, keep: str) -> None:
    """A trial hyperband stopped or that failed is never continued: unless ``keep`` is all, its checkpoints (up to
    135 MB) go. A finished trial has already kept what ``--keep_checkpoints`` said."""
    if keep != "all" and trial.state in ("stopped", "failed"):
        for name in ("best.pt", "last.pt"):
            try:
                (Path(trial.out_dir) / name).unlink(missing_ok=True)
            except OSError as exc:
                print(f"warning: [{trial.name}] could not remove its {name} ({exc.strerror or exc})", file=sys.stderr)


def collect_results(trial: Trial, metric: str) -> None:
    """Read the trial's epochs back from its ``metrics.jsonl``, find its W&B run folder, and settle its state.

    The trial's metric is its last epoch's value: what W&B shows as the run's summary value of a logged key.
    """
    out_dir = Path(trial.out_dir)
    trial.metric_history = epoch_values(read_metrics(out_dir / METRICS_FILE), metric)
    trial.metric = trial.metric_history[-1] if trial.metric_history else None
    trial.epochs = len(trial.metric_history)
    summary_file = out_dir / "summary.json"
    run_dir = find_run_dir(trial.wandb_run_id)
    if run_dir is None and summary_file.is_file():  # wandb fell back to another folder; run.py knows which
        logged = json.loads(summary_file.read_text()).get("wandb_run_dir")
        run_dir = Path(logged) if logged else None
    trial.wandb_run_dir = str(run_dir.resolve()) if run_dir is not None and run_dir.is_dir() else None
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

@dataclass
class SweepOptions:
    """The sweep's own flags (every other --key=value flag goes to every trial)"""

    count: int | None = None
    """Trials to run; unset = every point of a grid (needed for bayes and random)."""
    out_dir: str = ""
    """The sweep's folder (leaderboard.json, sweep.json, a folder per trial); empty = runs/sweeps/<sweep name>."""
    seed: int | None = None
    """Seed of the proposals; unset = fresh randomness."""
    wandb_mode: str = "offline"
    """W&B mode of the trials: offline, online or auto."""
    keep_checkpoints: str = "none"
    """Weights each trial keeps (train/run.py's --keep_checkpoints): none, best or all. A trial hyperband stopped or
    that failed keeps none unless all; an interrupted one keeps its checkpoints."""


def parse_options(argv: list[str]) -> tuple[str, SweepOptions, dict[str, str]]:
    """The spec path, the sweep's options and the trials' flags (parsed as ``train/run.py`` parses them)."""
    parser = build_parser("sweeps/local.py", "Run a W&B sweep spec locally, no W&B server: proposals from W&B's "
                          "sweep engine, each trial a train/run.py process with an offline W&B run.",
                          [(SweepOptions, None)])
    parser.add_argument("spec", help="the sweep YAML, e.g. sweeps/lr.yaml")
    namespace, rest = parser.parse_known_args(argv)
    given = vars(namespace)
    path = given.pop("spec")
    options = SweepOptions(**{key: coerce(key, value, SweepOptions) for key, value in given.items()})
    if options.count is not None and options.count < 1:
        raise SweepError(f"--count must be >= 1, got {options.count}")
    if options.seed is not None and options.seed < 0:
        raise SweepError(f"--seed must be >= 0, got {options.seed}")
    if options.wandb_mode not in ("offline", "online", "auto"):
        raise SweepError(f"--wandb_mode must be offline, online or auto, got {options.wandb_mode!r}")
    if options.keep_checkpoints not in KEEP_CHECKPOINTS:
        raise SweepError(f"--keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got "
                         f"{options.keep_checkpoints!r}")
    return path, options, parse_overrides(rest)


def main(argv: list[str] | None = None) -> int:
    """Entry point: check everything, then run the trials; one ``error:`` line and exit status 2 on bad input."""
    with stops_raise():  # Ctrl-C and SIGTERM stop the trial in progress cleanly and keep every result
        try:
            path, options, given = parse_options(sys.argv[1:] if argv is None else argv)
            check_wandb_environment()  # every trial would fail on it, each with a traceback
            if not hasattr(sweeps, "next_run"):
                raise SweepError("W&B's sweep engine is not installed (pip install sweeps)")
            raw = load_spec(path)
            overrides = dict(given)
            spec = json.loads(json.dumps(raw, default=str))  # plain containers the pinning may edit
            pinned = pin_parameters(spec, overrides) if isinstance(spec.get("parameters"), dict) else []
            spec = check_spec(spec, path, overrides)
            program = resolve_program(spec.get("program"))
            if options.count is None and spec["method"] != "grid":
                raise SweepError(f"--count N is needed: a {spec['method']} sweep never ends by itself")
            name = re.sub(r"[^\w.-]+", "-", str(spec.get("name") or Path(path).stem))
            out_dir = Path(options.out_dir or Path("runs") / "sweeps" / name)
            sweep = {"sweep": name, "spec": path, "method": spec["method"], "metric": dict(spec["metric"]),
                     "seed": options.seed, "spec_config": raw, "overrides": given}
            trials = earlier_trials(out_dir, sweep)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "sweep.json", sweep)
            print(f"sweep {name}: {spec['method']} over {', '.join(searched_parameters(spec))}; "
                  f"{spec['metric']['name']} ({spec['metric']['goal']}){early_text(spec)}; {len(trials)} earlier "
                  f"trials; {out_dir}/leaderboard.json", flush=True)
            if pinned:
                print(f"pinned by the extra flags (not searched): {', '.join(pinned)}", flush=True)
        except (SweepError, ConfigError, OSError) as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            return 2
        except Stopped as stop:  # further stops are ignored from here on (stops_raise)
            print(f"stopped: {stop.signal_name} before the first trial; no trial was started", file=sys.stderr)
            return exit_status(stop)
        return run_sweep(spec, program, name, out_dir, trials, overrides, options)


def searched_parameters(spec: dict[str, Any]) -> list[str]:
    """The parameters the engine chooses (constants left out, unless there is nothing else)."""
    return [k for k, p in spec["parameters"].items() if "value" not in p] or list(spec["parameters"])


def early_text(spec: dict[str, Any]) -> str:
    return f"; hyperband {spec['early_terminate']}" if "early_terminate" in spec else ""


def run_sweep(spec: dict[str, Any], program: str, name: str, out_dir: Path, trials: list[Trial],
              overrides: dict[str, str], options: SweepOptions) -> int:
    """Propose, run and rank trials until ``--count``, a grid's end, ``run_cap`` or a stop; returns the exit status."""
    board, searched = out_dir / "leaderboard.json", searched_parameters(spec)
    extra = [f"--{k}={v}" for k, v in overrides.items()]
    for key in ("project", "entity"):  # the sweep's W&B project, as an agent's runs get it
        if spec.get(key) and f"wandb_{key}" not in overrides and f"wandb_{key}" not in spec["parameters"]:
            extra.append(f"--wandb_{key}={spec[key]}")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")}
    env["WANDB_RUN_GROUP"] = name
    failed_in_a_row, started = 0, 0
    try:
        while options.count is None or started < options.count:
            if spec.get("run_cap") and len(trials) >= spec["run_cap"]:
                print(f"run_cap {spec['run_cap']} reached", flush=True)
                break
            engine_trials = [t for t in trials if t.state != "interrupted"]
            index = max((t.index for t in trials), default=0) + 1
            while (out_dir / f"{name}-{index:03d}").exists():  # never reuse a trial folder
                index += 1
            params = propose(spec, [t.sweep_run(spec["metric"]["name"]) for t in engine_trials], options.seed, index)
            if params is None:
                print(f"grid exhausted after {len(engine_trials)} trials", flush=True)
                break
            trial = Trial(name=f"{name}-{index:03d}", index=index, config=params, wandb_run_id=generate_id(),
                          out_dir=str((out_dir / f"{name}-{index:03d}").resolve()))
            trial.command = trial_argv(spec, program, params, extra + [
                f"--out_dir={trial.out_dir}", f"--run_name={trial.name}", f"--wandb_mode={options.wandb_mode}",
                f"--keep_checkpoints={options.keep_checkpoints}"])
            print(f"\n[{trial.name}] " + "  ".join(f"{k}={_fmt(v)}" for k, v in params.items() if k in searched)
                  + f"\n$ {shlex.join(trial.command)}", flush=True)
            trials.append(trial)
            started += 1
            run_trial(trial, {**env, "WANDB_RUN_ID": trial.wandb_run_id}, spec, engine_trials)
            discard_checkpoints(trial, options.keep_checkpoints)
            write_json(board, leaderboard(trials, spec["metric"]["goal"]))
            print(f"\n[{trial.name}] {trial.state} after {trial.seconds:.0f}s: {spec['metric']['name']} "
                  f"{_fmt(trial.metric, '.4f')}\n{leaderboard_table(trials, spec, searched)}", flush=True)
            failed_in_a_row = failed_in_a_row + 1 if trial.state == "failed" else 0
            if failed_in_a_row == MAX_FAILED_IN_A_ROW:
                break
        best = next((t for t in ranked(trials, spec["metric"]["goal"]) if t.metric is not None), None)
        if best is not None:
            print(f"\nbest: {best.name} {spec['metric']['name']} {best.metric:.4f}  "
                  + "  ".join(f"{k}={_fmt(v)}" for k, v in best.config.items() if k in searched)
                  + f"\nleaderboard: {board}", flush=True)
    except Stopped as stop:  # further stops are ignored from here on (stops_raise)
        if trials:
            write_json(board, leaderboard(trials, spec["metric"]["goal"]))
        print(f"\ninterrupted: {stop.signal_name}; {len(trials)} trials kept in {board}", file=sys.stderr)
        return exit_status(stop)
    return failure_status(trials[len(trials) - started:], failed_in_a_row == MAX_FAILED_IN_A_ROW)


def failure_status(started: list[Trial], gave_up: bool) -> int:
    """1 with an ``error:`` line when every trial this run started failed, or ``MAX_FAILED_IN_A_ROW`` in a row did
    (the sweep then stopped: a broken setup fails every trial); else 0."""
    if started and all(t.state == "failed" for t in started):
        print(f"error: all {len(started)} trials failed (see their output above)"
              + ("; sweep stopped" if gave_up else ""), file=sys.stderr)
        return 1
    if gave_up:
        print(f"error: {MAX_FAILED_IN_A_ROW} trials in a row failed (see their output above); sweep stopped",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
