"""What every benchmark shares: flags checked before any work, the machine it ran on, a loop over seeds, and a
results file that only grows.

A benchmark is then a function of its checked flags::

    parser = common.Parser(__doc__)
    parser.add_argument("--repeats", type=common.count(1), default=3)
    parser.add_argument("--data_dir", type=common.folder("train", "test"), default=str(DATA))
    parser.add_json(REPO / "bench" / "out" / "x.json")
    args = parser.parse(argv)          # a bad flag: one `error: ...` line on stderr, exit status 2, nothing done
    results = common.Results(args.json, common.machine(device))  # unreadable, or another machine's: refused too
    ...                                # the measurement
    return results.finish({**common.machine(device), ..., **common.stamp("bench/x.py", argv)}, measured=...)

* :class:`Parser` is argparse with one-line errors (``error: --repeats must be an integer >= 1, got '0'``, exit
  status 2, no usage block, no traceback), no abbreviated flags, and a "did you mean" for an unknown one. The
  ``type=`` checkers below (:func:`count`, :func:`number`, :func:`ints`, :func:`choices`, :func:`folder`,
  :func:`file`, :func:`out_file`, :func:`out_folder`, :func:`boolean`) refuse a bad value while the flags are parsed;
  argparse applies them to a text default too, so a missing default data folder is refused as early.
  :func:`device` and :func:`recipe_config` check ``--device`` and ``train/run.py``'s flags the same way.
* :func:`machine` names the device, the CPU model, its cores, torch; :func:`stamp` the date and the command.
* :func:`per_seed` runs a function once per seed with every generator seeded; :func:`spread` summarizes runs.
* :class:`Results` writes the JSON file atomically, merged into the file already there: a key this run measured
  replaces that key, one it did not measure keeps its earlier value (listed under ``kept_from_earlier``); a file
  of another machine, thread count or torch is refused, and a run that measured nothing writes nothing and exits 1.

Only the standard library is imported here; torch, timm and the repo's packages when a function needs them, so a
script's flags are refused as fast as the script's own imports allow.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
IDENTITY = ("device", "cpu", "gpu", "threads", "torch")  # a results file is merged into only when these match
KEPT = "kept_from_earlier"  # the dotted keys of a results file that an earlier run measured


def entry(main: Callable[[], int | None]) -> NoReturn:
    """A script's ``__main__``: exit with ``main()``'s status; Ctrl-C ends it with one ``stopped:`` line and status
    130, not a traceback (results files are written atomically: one holds all of a write or none of it)."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("stopped: interrupted (Ctrl-C); results files hold what was written before it", file=sys.stderr)
        code = 130
    sys.exit(code)


def fail(message: str) -> NoReturn:
    """The one way a benchmark refuses its input: ``error: message`` on one line of stderr, exit status 2."""
    print(f"error: {' '.join(str(message).splitlines())}", file=sys.stderr)
    sys.exit(2)


def read_predictions(path: Path, members: Sequence[str], flag: str = "") -> dict[str, Any]:
    """Every array of the explain step's ``predictions.npz`` at ``path`` (no pickles), or the one-line error, naming
    ``flag`` and the file, when it cannot be read, is no ``.npz`` (empty, a bad zip, a pickle, a lone ``.npy``) or
    lacks one of ``members``."""
    import zipfile

    import numpy as np

    where = f"{flag} {path}" if flag else str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        fail(f"{where} is not a predictions.npz ({type(exc).__name__}: {exc})")
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        fail(f"{where} is not a predictions.npz (one array, not an archive of them)")
    try:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        fail(f"{where} is not a predictions.npz ({type(exc).__name__}: {exc})")
    missing = [name for name in members if name not in arrays]
    if missing:
        fail(f"{where} is not a predictions.npz (it lacks {', '.join(missing)})")
    return arrays


# ---------------------------------------------------------------------------------------------------------------------
# Flags


class Parser(argparse.ArgumentParser):
    """argparse for the benchmarks: one-line ``error:`` messages with exit status 2, no abbreviated flags (``--seed``
    must not silently mean ``--seeds``), an unknown flag named with the closest known one.

    Args:
        doc: The script's docstring; its first line is the description ``--help`` shows.
        **kwargs: Passed to :class:`argparse.ArgumentParser`.
    """

    def __init__(self, doc: str | None, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(description=(doc or "").strip().split("\n")[0], **kwargs)

    def error(self, message: str) -> NoReturn:
        # argparse names a flag by all its spellings ("argument --batch_size/--batch_sizes: ..."): keep the first
        match = re.fullmatch(r"argument (--[\w-]+|\w+)(?:/[^:]*)?: (.*)", message, flags=re.DOTALL)
        fail(f"{match[1]} {match[2]}" if match else message)

    def add_json(self, default: str | Path | None, *names: str, help: str = "where the results are written (merged "
                 "into the file already there)") -> None:
        """The results file flag (``--json`` unless ``names`` say otherwise): a file in an existing folder. Without a
        ``default`` it is required; the default's own folder (``bench/out/``) is made when the results are written."""
        self.add_argument(*(names or ("--json",)), type=out_file, required=default is None,
                          default=Path(default) if default is not None else None, help=help)
        self.add_argument("--replace", action="store_true",
                          help="replace figures the results file holds from a measurement under other conditions "
                               "(other data, sizes or model); without it such a run is refused before any work")

    def parse(self, argv: Sequence[str] | None = None, *, rest: str | None = None) -> argparse.Namespace:
        """The checked flags of ``argv`` (default ``sys.argv[1:]``).

        Args:
            rest: Where flags meant for another program go, as ``args.rest``: ``"--"`` takes everything after a
                ``--``; ``"unknown"`` every flag this parser does not know (the other program's parser checks them).
                Without it an unknown flag is an error.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        other: list[str] = []
        if rest == "--" and "--" in argv:
            argv, other = argv[:argv.index("--")], argv[argv.index("--") + 1:]
        args, unknown = self.parse_known_args(argv)
        if unknown and rest != "unknown":
            flag = next((u for u in unknown if u.startswith("-")), unknown[0])
            if not flag.startswith("-"):
                self.error(f"unexpected argument {flag!r} (flags look like --key=value)")
            flag = flag.split("=", 1)[0]
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            match = difflib.get_close_matches(flag, known, n=1, cutoff=0.5)
            self.error(f"unknown flag {flag}" + (f" (did you mean {match[0]}?)" if match else ""))
        if rest is not None:
            args.rest = other + unknown
        return args


def _checked(name: str, check: Callable[[str], T]) -> Callable[[str], T]:
    """``check`` as an argparse ``type``: its ``ValueError`` becomes the flag's one-line error."""

    def convert(text: str) -> T:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be an integer, got {text!r}") from None


def count(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An integer in ``[minimum, maximum]`` (a count of images, steps, repeats...)."""

    def check(text: str) -> int:
        value = _int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise ValueError(f"must be an integer {bound}, got {text!r}")
        return value

    return _checked("count", check)


def number(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """A finite number in ``[minimum, maximum]`` (either bound optional)."""

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value != value or value in (float("inf"), float("-inf")) or (minimum is not None and value < minimum) \
                or (maximum is not None and value > maximum):
            bound = " and ".join(part for part in (f">= {minimum:g}" if minimum is not None else "",
                                                   f"<= {maximum:g}" if maximum is not None else "") if part)
            raise ValueError(f"must be a number{' ' + bound if bound else ''}, got {text!r}")
        return value

    return _checked("number", check)


def ints(minimum: int | None = None, length: int | None = None, what: str = "") -> Callable[[str], list[int]]:
    """A comma-separated list of integers (``0,1,2``), each ``>= minimum``, exactly ``length`` of them if given;
    ``what`` names the list in the message (``TRAIN,TEST``)."""

    def check(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            values = []
        if not values or (minimum is not None and min(values) < minimum) or (length and len(values) != length):
            kind = f"{length} " if length else "a comma-separated list of "
            bound = f" >= {minimum}" if minimum is not None else ""
            raise ValueError(f"must be {what + ': ' if what else ''}{kind}integers{bound}, got {text!r}")
        return values

    return _checked("ints", check)


def choices(options: Iterable[str], *, empty: bool = False) -> Callable[[str], list[str]]:
    """A comma-separated list of names from ``options`` (in the order given); ``empty`` allows none."""
    options = list(options)

    def check(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in options]
        if unknown:
            raise ValueError(f"has unknown {', '.join(map(repr, unknown))} (choose from {', '.join(options)})")
        if not names and not empty:
            raise ValueError(f"names none of {', '.join(options)}")
        return names

    return _checked("choices", check)


def boolean(text: str) -> bool:
    """``True``/``False`` (also ``1``/``0``, ``yes``/``no``), as ``train/run.py``'s flags."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expects True or False, got {text!r}")
    return value


def folder(*contains: str, hint: str = "") -> Callable[[str], Path]:
    """An existing folder holding each of ``contains`` (files or folders); ``hint`` says how to make it."""

    def check(text: str) -> Path:
        path = Path(text)
        if not path.is_dir():
            raise ValueError(f"{text!r} is not a folder{hint}")
        missing = [name for name in contains if not (path / name).exists()]
        if missing:
            raise ValueError(f"{text!r} has no {' or '.join(missing)}{hint}")
        return path

    return _checked("folder", check)


def _file(text: str) -> Path:
    if not Path(text).is_file():
        raise ValueError(f"{text!r} is not a file")
    return Path(text)


def _out_file(text: str) -> Path:
    path = Path(text)
    if not text or path.is_dir():
        raise ValueError(f"{text!r} is a folder, not a file")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"{text!r} is in a folder that does not exist ({str(path.resolve().parent)!r})")
    return path


def _out_folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{text!r} is a file, not a folder")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"{text!r} is in a folder that does not exist ({str(path.resolve().parent)!r})")
    return path


def _new_folder(text: str) -> Path:
    path = _out_folder(text)
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{text!r} is not empty (a run never overwrites another)")
    return path


file = _checked("file", _file)  # an existing file to read
out_file = _checked("out_file", _out_file)  # a file to write, in an existing folder
out_folder = _checked("out_folder", _out_folder)  # a folder to write into: there already, or its parent is
new_folder = _checked("new_folder", _new_folder)  # a folder a run fills: absent (its parent there) or empty


def check_compile_backend(parser: argparse.ArgumentParser, name: str) -> None:
    """Refuse a ``torch.compile`` backend this torch lacks with the parser's one-line error (``none``: no compiling)."""
    if name == "none":
        return
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if name not in backends:
        parser.error(f"--compile_backend {name!r} is not one of {', '.join(backends)}, none")


def recipe_config(flags: Sequence[str], what: str = "", *, seeds: bool = False) -> Any:
    """``train/run.py``'s checked and resolved :class:`train.config.Config` of ``flags`` (its own messages), or the
    script's ``error:`` exit; ``what`` names the flags in the message (``--variants '--lr=x': ...``). With ``seeds``
    (a script that takes ``--seeds``) a ``--seed`` among them is refused: the loop over the seeds would ignore it."""
    from train.config import ConfigError, parse_args

    prefix = f"{what}: " if what else ""
    try:
        config, given = parse_args(list(flags))
    except ConfigError as exc:
        fail(f"{prefix}{exc}")
    if seeds and "seed" in given:
        fail(f"{prefix}--seed is not used here: give --seeds (one run per seed)")
    return config


def device(name: str) -> Any:
    """The torch device ``--device name`` means (``train.engine.resolve_device``: ``auto`` is CUDA when there is
    one), or the script's ``error:`` exit when this machine has no such device."""
    from train.config import ConfigError
    from train.engine import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as exc:
        fail(str(exc))
    except RuntimeError:  # torch.device's own refusal of a name, several lines long
        fail(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)")


# ---------------------------------------------------------------------------------------------------------------------
# The machine and the run


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(device: Any = None) -> dict[str, Any]:
    """What a figure was measured on: ``device`` (``cpu`` or the GPU's name; absent when ``device`` is None, for a
    script whose work runs in another process), ``cpu`` (model name), ``cores``, ``threads`` (torch's), ``gpu`` (the
    first CUDA device's name, or None) and ``torch`` (its version)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    about = {"cpu": cpu_model(), "cores": cores(), "threads": torch.get_num_threads(), "gpu": gpu,
             "torch": torch.__version__}
    if device is None:
        return about
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, **about}


def stamp(script: str, argv: Sequence[str] | None = None) -> dict[str, str]:
    """``date`` and ``command`` (the script with its flags, quoted to be pasted into a shell)."""
    return {"date": time.strftime("%Y-%m-%d"),
            "command": shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])}


def per_seed(seeds: Sequence[int], run: Callable[[int], T]) -> list[T]:
    """``run(seed)`` for each seed in turn, Python's, NumPy's and torch's generators seeded with it first
    (``timm.utils.random_seed``); the results in the seeds' order."""
    from timm.utils import random_seed

    results = []
    for seed in seeds:
        random_seed(seed)
        results.append(run(seed))
    return results


def t_interval(values: Sequence[float], confidence: float = 0.95) -> list[float]:
    """The ``confidence`` t interval of the mean of ``values`` (scipy's t quantile); the mean twice with fewer than
    two values."""
    import statistics

    from scipy.stats import t

    mean, n = statistics.fmean(values), len(values)
    if n < 2:
        return [mean, mean]
    half = t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(values) / n ** 0.5
    return [mean - half, mean + half]


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, sample standard deviation (0 for one value), median, min, max and count; None for no values."""
    import statistics

    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ---------------------------------------------------------------------------------------------------------------------
# The results file


def merge(earlier: dict, new: dict, depth: int = 2) -> tuple[dict, list[tuple[str, ...]]]:
    """``earlier`` updated by ``new`` key by key, ``depth`` levels of dicts down (below that a new value replaces
    the earlier one whole); the merged dict and the keys (as paths) that only ``earlier`` had."""
    merged, kept = dict(earlier), [(key,) for key in earlier if key not in new]
    for key, value in new.items():
        if depth > 1 and isinstance(value, dict) and isinstance(earlier.get(key), dict):
            merged[key], inner = merge(earlier[key], value, depth - 1)
            kept += [(key, *path) for path in inner]
        else:
            merged[key] = value
    return merged, kept


class Results:
    """A benchmark's JSON results file, which a run never replaces with less.

    What this run measured is merged into the file already there (:func:`merge`, ``depth`` levels deep: by default
    a step or a configuration replaces its own entry, the others stay); ``kept_from_earlier`` lists the dotted keys an
    earlier run measured and this one did not. Both checks happen when it is made, before any work: the file must be
    a JSON object, and its :data:`IDENTITY` (device, CPU, GPU, torch threads, torch; where both say) must be this
    run's, as figures of two machines in one file would read as one measurement.

    Args:
        path: The results file (its folder is made when it is written).
        identity: This run's :func:`machine` (or the part of it known before the work); None: not checked.
        base: Keys every results file has (an empty table, say), under the earlier and the new values.
        depth: How many levels of dicts are merged key by key (below, a new value replaces the earlier one whole).
    """

    def __init__(self, path: str | Path, identity: dict[str, Any] | None = None, base: dict | None = None,
                 depth: int = 2, conditions: dict[str, Any] | None = None, replace: bool = False):
        self.path, self.base, self.depth = Path(path), base or {}, depth
        self.conditions = conditions or {}
        self.earlier: dict = {}
        if self.path.exists():
            try:
                self.earlier = json.loads(self.path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                fail(f"{self.path} exists and is not a readable JSON file ({exc}); move it away or write elsewhere")
            if not isinstance(self.earlier, dict):
                fail(f"{self.path} exists and is not a JSON object; move it away or write elsewhere")
            self.earlier.pop(KEPT, None)
        for key in IDENTITY:
            mine, theirs = (identity or {}).get(key), self.earlier.get(key)
            if mine is not None and theirs is not None and mine != theirs:
                fail(f"{self.path} holds figures measured with {key} {theirs!r}, not this run's {mine!r}; "
                     f"move it away or write elsewhere")
        # A lesser measurement (fewer images, synthetic ones, another model) never silently replaces a results file:
        # the conditions a measurement was made under are compared before any work.
        recorded = {**self.earlier, **(self.earlier.get("conditions") or {})}
        differ = [f"{key} {recorded[key]!r} there, {value!r} here" for key, value in self.conditions.items()
                  if key in recorded and recorded[key] != value]
        if differ and not replace:
            fail(f"{self.path} holds figures measured under other conditions ({'; '.join(differ)}); pass --replace "
                 f"to replace them, or write elsewhere with --json")

    def merged(self, result: dict) -> dict:
        """What the file will hold once ``result`` is written."""
        merged, _ = merge(self.base, self.earlier, self.depth)
        merged, kept = merge(merged, result, self.depth)
        # an earlier figure, not a default of the base an earlier write put in the file
        kept = [".".join(map(str, path)) for path in kept
                if _get(self.earlier, path) not in (_MISSING, _get(self.base, path))]
        return {**merged, KEPT: kept} if kept else merged

    def write(self, result: dict) -> dict:
        """Merge ``result`` into the file (atomically); what the file holds now."""
        return self.save(self.merged(result))

    def save(self, merged: dict) -> dict:
        """Write ``merged`` (from :meth:`merged`, amended) as the file, atomically."""
        from train.files import write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, merged)
        return merged

    def finish(self, result: dict, *, measured: bool, why: str = "") -> int:
        """The end of a run: write ``result`` and return 0, or, when nothing was ``measured``, leave the file as it
        is, say so (``why``) and return 1."""
        if not measured:
            print(f"error: nothing was measured{': ' + why if why else ''}; {self.path} is left as it was",
                  file=sys.stderr)
            return 1
        self.write({**result, "conditions": self.conditions} if self.conditions else result)
        print(f"wrote {self.path}")
        return 0


_MISSING = object()


def _get(data: dict, path: tuple[str, ...]) -> Any:
    """The value at ``path`` (``("steps", "default")``) in ``data``, or :data:`_MISSING`."""
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data
