"""Check that offline W&B runs hold everything ``wandb sync`` needs, before the folder travels.

    python -m train.offline_check                      # every offline run under ./wandb
    python -m train.offline_check runs-wandb/ wandb/offline-run-20261126_120000-abc123

Each argument is a ``wandb/`` folder (all its ``offline-run-*`` folders), a ``WANDB_DIR`` (its ``wandb/`` subfolder)
or one run folder. Every run's records are read with W&B's own reader (``wandb leet inspect --json``), and every file
they reference is looked for: the run's media and files (``files/...``, relative to the run folder) and each
artifact's manifest entries (the tables' JSON and images, the model checkpoint), which W&B records by **absolute**
path in its staging folder. The report says what a sync would upload (history rows, tables, artifacts, sizes) and,
for anything missing, where it is expected — and where it is now, when the ``wandb/`` folder was moved or copied
(W&B's records still name the old place). Exit status 0 when every run is complete, 2 with an ``error:`` line when
not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunCheck", "check_run", "find_runs", "main"]

STAGING = Path("artifacts") / "staging"


class CheckError(ValueError):
    """A path that is not an offline W&B run or folder of them; one line for the user."""


@dataclass
class RunCheck:
    """What one offline run references and whether it is all there."""

    run_dir: Path
    run_id: str = ""
    state: str = "unknown"  # finished (exit record), or unknown (killed: no exit record yet)
    history_rows: int = 0
    files: int = 0  # files the run uploads itself (media, output.log, ...)
    file_bytes: int = 0
    tables: int = 0
    artifacts: Counter = field(default_factory=Counter)  # type -> count
    artifact_bytes: int = 0
    missing: list[str] = field(default_factory=list)  # one line per missing file: what, and where it is expected
    moved: list[str] = field(default_factory=list)  # missing at its recorded path, found beside this folder

    @property
    def complete(self) -> bool:
        return not self.missing


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
        folder = path / "wandb" if (path / "wandb").is_dir() and not list(path.glob("offline-run-*")) else path
        found = sorted(p for p in folder.glob("offline-run-*") if p.is_dir())
        if not found:
            raise CheckError(f"{given!r} holds no offline W&B run (offline-run-* folders with a run-*.wandb file)")
        runs += found
    return runs


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the run, read by W&B's own reader (the ``wandb leet inspect --json`` command)."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise CheckError(f"W&B cannot read the run {str(run_dir)!r}: {reason}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


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
    check = RunCheck(run_dir)
    for record in read_records(run_dir):
        kind = record.get("type")
        if kind == "run":
            check.run_id = record["run"].get("run_id", "")
        elif kind == "exit":
            check.state = "finished"
        elif kind == "history":
            check.history_rows += 1
            check.tables += sum(1 for key, value in record["history"]["item"].items()
                                if key.endswith("._type") and value in ("table-file", "partitioned-table"))
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
    return check


def _check_artifact(artifact: dict[str, Any], run_dir: Path, check: RunCheck) -> None:
    check.artifacts[artifact.get("type", "?")] += 1
    for entry in artifact.get("manifest", {}).get("contents", []):
        if "ref" in entry or not entry.get("local_path"):  # a reference artifact: nothing to upload
            continue
        local = Path(entry["local_path"])
        if local.is_file():
            check.artifact_bytes += local.stat().st_size
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
    artifacts = ", ".join(f"{n} {kind}" for kind, n in sorted(check.artifacts.items())) or "none"
    lines = [f"{check.run_dir} (run {check.run_id or '?'}, {check.state}): "
             + ("complete" if check.complete else f"{_count(len(check.missing), 'referenced file')} missing"),
             f"  a sync uploads {_count(check.history_rows, 'history row')}, {_count(check.tables, 'table')}, "
             f"{_count(check.files, 'run file')} "
             f"({_size(check.file_bytes)}), artifacts: {artifacts} ({_size(check.artifact_bytes)} present)"]
    lines += [f"  missing: {line}" for line in check.missing[:20]]
    if len(check.missing) > 20:
        lines.append(f"  ... and {len(check.missing) - 20} more")
    if check.moved:
        lines.append("  W&B's records name the staged files by absolute path: sync where those paths exist (move the "
                     "folder back, or link the old path to this one), e.g. "
                     f"ln -s {check.run_dir.parent} {Path(check.moved[0].split(' -> ')[0]).parents[2]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point: check, report, exit 0 (complete) or 2 (``error:`` line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(__doc__.strip())
        return 0
    try:
        flags = [a for a in args if a.startswith("-")]
        if flags:
            raise CheckError(f"unknown flag {flags[0]} (give wandb/ folders or run folders)")
        checks = [check_run(run) for run in find_runs(args or ["wandb"])]
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for check in checks:
        print("\n".join(report(check)))
    incomplete = [c for c in checks if not c.complete]
    if incomplete:
        missing = sum(len(c.missing) for c in incomplete)
        print(f"error: {len(incomplete)} of {len(checks)} offline runs cannot be synced as they are ({missing} "
              f"referenced files missing; see above)", file=sys.stderr)
        return 2
    print(f"all {len(checks)} offline runs complete: `wandb sync` of each folder uploads everything listed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
