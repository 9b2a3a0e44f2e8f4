"""Check that offline W&B runs hold everything ``wandb sync`` needs, before the folder travels.

    python -m train.offline_check                      # every offline run under ./wandb
    python -m train.offline_check runs-wandb/ wandb/offline-run-20261126_120000-abc123

Each argument is a ``wandb/`` folder (all its ``offline-run-*`` folders), a ``WANDB_DIR`` (its ``wandb/`` subfolder),
one run folder, or a training run's folder (``runs/NAME``: the W&B run its ``summary.json`` names). Every run's
records are read with W&B's own reader (``wandb leet inspect --json``), and every file they reference is looked for
(and, for artifacts, checked against the digest the run logged): the run's media and files (``files/...``, relative
to the run folder) and each artifact's manifest entries (the tables' JSON and images, the model checkpoint), which
W&B records by **absolute** path in its staging folder. The report says what a sync would upload (history rows,
tables, artifacts, sizes) and, for anything missing, where it is expected — and where it is now, when the ``wandb/``
folder was moved or copied (W&B's records still name the old place).

A record file that W&B's reader cannot read whole — empty, cut short (truncated, or its run killed or still
running), or with corrupt data it skips (a checksum mismatch) — is named as incomplete or corrupt; the other runs
are still reported. A run whose captured output holds W&B's "Tried to log to step N that is less than the current
step" lacks what that call logged (W&B ignored it: nothing in the record file, nothing for a sync) and is not
complete either (W&B prints that warning, and so records it, only when ``WANDB_SILENT`` is not set; ``train/run.py``
never logs behind W&B's step). W&B's offline mode cannot reopen a run, so ``train/run.py --resume`` of an offline
run writes a second folder with the same run id that replays every finished epoch: an earlier folder of a run whose
every epoch a later folder holds is a **superseded fragment**, to leave out of the sync, and the last line names the
folders to sync.

Exit status 0 when every run to sync is complete, 2 with an ``error:`` line at the end when not. Ctrl-C (or SIGTERM)
at any moment prints one ``stopped:`` line and exits with 128 + the signal's number (130 for Ctrl-C): never 0, which
would say every run is complete.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.config import one_line
from train.stops import Stopped, stops_raise

__all__ = ["RunCheck", "check_run", "find_runs", "main", "mark_superseded"]

STAGING = Path("artifacts") / "staging"
TABLE_TYPES = ("table-file", "partitioned-table", "incremental-table-file")  # history values W&B gives a table
READER = "wandb leet inspect: "  # how W&B's reader starts what it says about a record file (on stderr, exit 0)
READ_TIMEOUT = 300  # seconds for W&B's reader on one run
DROPPED = "Tried to log to step"  # how W&B's service says, in the run's captured output, that it ignored a row


class CheckError(ValueError):
    """A path that is not an offline W&B run or folder of them; one line for the user."""


@dataclass
class RunCheck:
    """What one offline run references and whether it is all there."""

    run_dir: Path
    run_id: str = ""
    state: str = "no exit record"  # finished (exit code 0), exit code N, or no exit record (killed, or running)
    has_run_record: bool = False
    history_rows: int = 0
    steps: set[int] = field(default_factory=set)  # the W&B steps of its history rows (train/run.py: the epochs)
    files: int = 0  # files the run uploads itself (media, output.log, ...)
    file_bytes: int = 0
    tables: int = 0
    artifacts: Counter = field(default_factory=Counter)  # type -> count
    artifact_bytes: int = 0
    missing: list[str] = field(default_factory=list)  # one line per missing file: what, and where it is expected
    moved: list[str] = field(default_factory=list)  # missing at its recorded path, found beside this folder
    damaged: list[str] = field(default_factory=list)  # what keeps W&B's reader from reading the record file whole
    dropped: list[str] = field(default_factory=list)  # W&B's own words, in the run's output, on data it ignored
    superseded_by: Path | None = None  # a later folder of the same run that holds every step this one holds

    @property
    def complete(self) -> bool:
        """Everything a sync of this folder needs is there and readable, and the run ended (an exit record): a run
        killed and never resumed, or still running, is not complete."""
        return not self.missing and not self.damaged and not self.dropped and self.state != "no exit record"


def find_runs(paths: list[str]) -> list[Path]:
    """The offline run folders of ``paths`` (see the module doc), in name order.

    Raises:
        CheckError: a path that does not exist or holds no offline W&B run.
    """
    runs: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise CheckError(f"{given!r} does not exist")
        if list(path.glob("run-*.wandb")):
            runs.append(path)
            continue
        summary = path / "summary.json"
        if summary.is_file() and not (path / "wandb").is_dir():  # a training run's folder: its W&B run
            try:
                recorded = json.loads(summary.read_text()).get("wandb_run_dir")
            except (OSError, ValueError, AttributeError):
                recorded = None
            if not recorded:
                raise CheckError(f"{given!r} is a run folder whose summary.json names no W&B run (--wandb_mode "
                                 f"disabled?)")
            run_dir = Path(recorded)
            if not list(run_dir.glob("run-*.wandb")):
                raise CheckError(f"{given!r} is a run folder whose W&B run {recorded!r} is not there (moved? give its "
                                 f"folder instead)")
            runs.append(run_dir)
            continue
        folder = path / "wandb" if (path / "wandb").is_dir() and not list(path.glob("offline-run-*")) else path
        found = sorted(p for p in folder.glob("offline-run-*") if p.is_dir())
        if not found:
            raise CheckError(f"{given!r} holds no offline W&B run (offline-run-* folders with a run-*.wandb file)")
        runs += found
    unique: dict[Path, Path] = {}  # a folder named twice (a wandb/ folder and one of its runs) is checked once
    for run in runs:
        unique.setdefault(run.resolve(), run)
    return list(unique.values())


def read_records(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every record of the run that W&B's own reader (``wandb leet inspect --json``) can read, and what it says is
    wrong with the record file.

    The reader skips corrupt data (a checksum mismatch) and stops where a file is cut short, exiting 0 either way:
    its lines on stderr are the only sign, so they are returned, as is its reason when it cannot read the file at all.
    """
    try:
        done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                              capture_output=True, text=True, timeout=READ_TIMEOUT)
    except subprocess.TimeoutExpired:
        return [], [f"W&B's reader did not finish within {READ_TIMEOUT} s"]
    said = [line.removeprefix(READER) for line in done.stderr.splitlines() if line.startswith(READER)]
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1].removeprefix("Error: ")
        said.append(f"W&B's reader cannot read it: {reason}")
    records = []
    for line in done.stdout.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            said.append("W&B's reader printed a record that is not JSON")
            break
    return records, said


def _nothing_read(run_dir: Path) -> str:
    """Why a run folder yielded no record although the reader raised no complaint: an empty or header-only file."""
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        return "no run-*.wandb record file"
    size = files[-1].stat().st_size
    if size == 0:
        return f"{files[-1].name} is empty (0 bytes)"
    return (f"{files[-1].name} holds no record ({size} bytes): the run ended before W&B wrote its first one (a "
            f"process killed early)")


def _id_from_name(run_dir: Path) -> str:
    """The run id in W&B's names: ``run-ID.wandb`` inside ``offline-run-TIME-ID``; for a file that holds no run
    record (a run killed before W&B wrote it)."""
    names = sorted(path.name for path in run_dir.glob("run-*.wandb"))
    found = re.fullmatch(r"run-(.+)\.wandb", names[-1]) if names else None
    return found.group(1) if found else run_dir.name.rsplit("-", 1)[-1]


def _relocated(recorded: Path, run_dir: Path) -> Path | None:
    """Where a staged file is now when the ``wandb/`` folder holding it moved: the same path below ``artifacts/``
    of this run's ``wandb/`` folder."""
    parts = recorded.parts
    if "artifacts" not in parts:
        return None
    candidate = run_dir.parent.joinpath(*parts[parts.index("artifacts"):])
    return candidate if candidate.is_file() else None


def check_run(run_dir: Path) -> RunCheck:
    """Read one offline run's records and look for every file they reference."""
    check = RunCheck(run_dir, run_id=_id_from_name(run_dir))
    records, check.damaged = read_records(run_dir)
    if not records and not check.damaged:
        check.damaged.append(_nothing_read(run_dir))
    summary_tables: set[str] = set()
    for record in records:
        kind = record.get("type")
        if kind == "run":
            check.run_id = record["run"].get("run_id") or check.run_id
            check.has_run_record = True
        elif kind == "exit":
            code = record["exit"].get("exit_code", 0)
            check.state = "finished" if code == 0 else f"exit code {code}"
        elif kind == "history":
            check.history_rows += 1
            if isinstance(record["history"]["item"].get("_step"), int):
                check.steps.add(record["history"]["item"]["_step"])
            check.tables += sum(1 for key, value in record["history"]["item"].items()
                                if key.endswith("._type") and value in TABLE_TYPES)
        elif kind == "summary":  # tables the run put in its summary (train.tracking.summary_tables), once per key
            summary_tables.update(key for key, value in record["summary"].get("update", {}).items()
                                  if isinstance(value, dict) and value.get("_type") in TABLE_TYPES)
        elif kind == "files":
            for entry in record["files"]["files"]:
                path = run_dir / "files" / entry["path"]
                if path.is_file():
                    check.files += 1
                    check.file_bytes += path.stat().st_size
                else:
                    check.missing.append(f"run file {entry['path']} expected at {path}")
        elif kind == "artifact":
            _check_artifact(record["artifact"], run_dir, check)
        elif kind == "output_raw" and DROPPED in record["output_raw"].get("line", ""):
            # logged to a step W&B had committed: not in the record file at all, so a sync cannot upload it
            check.dropped.append(record["output_raw"]["line"].strip().removeprefix("wandb: WARNING "))
    check.tables += len(summary_tables)
    if records and not check.has_run_record:
        check.damaged.append("no run record among what W&B's reader could read: a sync cannot create the run")
    return check


def mark_superseded(checks: list[RunCheck]) -> None:
    """Mark each folder whose every step a later folder of the same run holds (``superseded_by``).

    W&B's offline mode cannot reopen a run, so an offline ``--resume`` is a new folder with the same run id that
    replays every finished epoch from the checkpoint before going on (``train/run.py``): the later folder alone holds
    the whole run, and the earlier ones — the part a stop ended, or the fragment a ``kill -9`` left, often without a
    single record — are to be left out of the sync. Folders are ordered by name (``offline-run-TIME-ID``).
    """
    parts: dict[str, list[RunCheck]] = defaultdict(list)
    for check in checks:
        parts[check.run_id].append(check)
    for same_run in parts.values():
        same_run.sort(key=lambda c: (c.run_dir.name, str(c.run_dir)))
        for i, check in enumerate(same_run):
            later = [c for c in same_run[i + 1:] if c.has_run_record and check.steps <= c.steps]
            if later:
                check.superseded_by = later[-1].run_dir


def _md5(path: Path) -> str:
    """The file's digest as W&B's manifests record it, by W&B's own function (imported here: only runs with
    artifacts pay wandb's import)."""
    from wandb.sdk.lib.hashutil import md5_file_b64

    return md5_file_b64(str(path))


def _check_artifact(artifact: dict[str, Any], run_dir: Path, check: RunCheck) -> None:
    check.artifacts[artifact.get("type", "?")] += 1
    for entry in artifact.get("manifest", {}).get("contents", []):
        if "ref" in entry or not entry.get("local_path"):  # a reference artifact: nothing to upload
            continue
        local = Path(entry["local_path"])
        if local.is_file():
            check.artifact_bytes += local.stat().st_size
            if entry.get("digest") and _md5(local) != entry["digest"]:  # replaced since it was logged (W&B's digest)
                check.missing.append(f"artifact {artifact.get('name', '?')}: {entry.get('path')} at {local} changed "
                                     f"since the run logged it (its content digest differs): a sync would upload "
                                     f"other bytes than the run logged")
            continue
        line = f"artifact {artifact.get('name', '?')}: {entry.get('path')} expected at {local}"
        elsewhere = _relocated(local, run_dir)
        if elsewhere is not None:
            check.moved.append(f"{local} -> {elsewhere}")
            line += f" (now at {elsewhere}: the wandb/ folder moved)"
        check.missing.append(line)


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.1f} KB"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def report(check: RunCheck) -> list[str]:
    """The lines printed for one run."""
    head = f"{check.run_dir} (run {check.run_id or '?'}, {check.state}): "
    if check.superseded_by is not None:
        return [f"{head}superseded fragment of run {check.run_id}: leave it out of the sync (the later folder "
                f"{check.superseded_by} holds every epoch)"]
    artifacts = ", ".join(f"{n} {kind}" for kind, n in sorted(check.artifacts.items())) or "none"
    status = (["record file incomplete or corrupt"] if check.damaged else []) + (
        [f"{_count(len(check.missing), 'referenced file')} missing or changed"] if check.missing else []) + (
        ["never ended: killed (continue it with train/run.py --resume) or still running"]
        if check.state == "no exit record" and not check.damaged else []) + (
        [f"W&B ignored {_count(len(check.dropped), 'logged row')} (logged to a step it had committed): the run "
         f"lacks them"] if check.dropped else [])
    lines = [head + ("; ".join(status) or "complete"),
             f"  a sync uploads {_count(check.history_rows, 'history row')}, {_count(check.tables, 'table')}, "
             f"{_count(check.files, 'run file')} "
             f"({_size(check.file_bytes)}), artifacts: {artifacts} ({_size(check.artifact_bytes)} present)"]
    lines += [f"  record file: {line}" for line in check.damaged]
    lines += [f"  ignored by W&B: {line}" for line in check.dropped[:5]]
    lines += [f"  missing: {line}" for line in check.missing[:20]]
    if len(check.missing) > 20:
        lines.append(f"  ... and {len(check.missing) - 20} more")
    if check.moved:
        lines.append("  W&B's records name the staged files by absolute path: sync where those paths exist (move the "
                     "folder back, or link the old path to this one), e.g. "
                     f"ln -s {check.run_dir.parent} {Path(check.moved[0].split(' -> ')[0]).parents[2]}")
    return lines


def verdict(checks: list[RunCheck]) -> tuple[str, int]:
    """The last line and the exit status: which folders to sync, or why some cannot be synced as they are."""
    fragments = [c for c in checks if c.superseded_by is not None]
    to_sync = [c for c in checks if c.superseded_by is None]
    failing = [c for c in to_sync if not c.complete]
    if failing:
        damaged, missing = sum(1 for c in failing if c.damaged), sum(len(c.missing) for c in failing)
        unended = sum(1 for c in failing if c.state == "no exit record" and not c.damaged)
        reasons = ([f"{_count(damaged, 'record file')} incomplete or corrupt"] if damaged else []) + (
            [f"{missing} referenced files missing or changed"] if missing else []) + (
            [f"{_count(unended, 'run')} never ended"] if unended else []) + (
            [f"{_count(ignored, 'run')} lacking rows W&B ignored"] if (ignored := sum(
                1 for c in failing if c.dropped)) else [])
        return (f"error: {len(failing)} of {len(checks)} offline runs cannot be synced as they are "
                f"({', '.join(reasons)}; see above)"), 2
    if not fragments:
        return f"all {len(checks)} offline runs complete: `wandb sync` of each folder uploads everything listed", 0
    folders = " ".join(str(c.run_dir) for c in to_sync)
    return (f"all complete: sync {_count(len(to_sync), 'folder')} and leave out "
            f"{_count(len(fragments), 'superseded fragment')}: wandb sync {folders}"), 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: check, report, exit 0 (complete) or 2 (``error:`` line); a stop is one ``stopped:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(__doc__.strip())
        return 0
    runs: list[Path] = []
    checks: list[RunCheck] = []
    with stops_raise():
        try:
            flags = [a for a in args if a.startswith("-")]
            if flags:
                raise CheckError(f"unknown flag {flags[0]} (give wandb/ folders or run folders)")
            runs = find_runs(args or ["wandb"])
            for run in runs:
                checks.append(check_run(run))
            mark_superseded(checks)
            last, status = verdict(checks)
            for check in checks:
                print("\n".join(report(check)), flush=True)
            print(last, file=sys.stderr if status else sys.stdout)
            return status
        except CheckError as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            return 2
        except Stopped as stop:  # further stops are ignored from here on (stops_raise)
            where = f"after checking {len(checks)} of {len(runs)} offline runs" if runs else "before checking a run"
            print(f"stopped: {stop.signal_name} {where}; nothing was changed (the check only reads)", file=sys.stderr)
            return stop.wandb_exit_code  # 128 + the signal's number, never 0: that would say every run is complete


if __name__ == "__main__":
    sys.exit(main())
