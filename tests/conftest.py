"""Shared fixtures: an isolated offline W&B, the real JPEG CIFAR-10 copy, and helpers to run the entry points."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # Started as a background job without job control (`.ci/run &` in a script), the test run ignores SIGINT, and
    # so would every program a test starts (an ignored signal stays ignored across exec): the Ctrl-C tests could not
    # deliver one. A handler here is reset to the default at exec, so those programs see Ctrl-C as a user's would.
    signal.signal(signal.SIGINT, signal.default_int_handler)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist each worker (and every program a test starts, which inherits this) computes on one thread:
    # with -n auto there are more workers than cores already, and two workers of two OpenMP threads each on two cores
    # run slower than one thread each. Set before anything imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker per core plus one. Tests wait on training subprocesses, W&B's service and signals; on
    the 2-core CI machine two workers kept the cores 89 % busy, three 98 % (the suite in 579 s)."""
    return (os.cpu_count() or 1) + 1


ARCHIVE = Path(os.environ.get("CIFAR_JPEG_ARCHIVE", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"))


@pytest.fixture(autouse=True)
def stop_signals_put_back():
    """A test that stops an in-process run leaves SIGINT/SIGTERM ignored (what a stopped program does while it exits,
    so a second Ctrl-C cannot cut its clean-up short); every program a later test of this worker starts would inherit
    that and never see its stop. Put back what the test found."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)


@pytest.fixture(scope="session", autouse=True)
def offline_wandb(tmp_path_factory):
    """All tests (module and session fixtures too) get private W&B folders and no credentials: runs are offline
    and never prompt. Session-wide because module-scoped fixtures start runs before any function fixture."""
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            patch.setenv(name, str(root))
        patch.setenv("NETRC", str(root / "no-netrc"))
        patch.setenv("WANDB_SILENT", "true")
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_RUN_ID", "WANDB_SWEEP_ID",
                     "WANDB_BASE_URL", "WANDB_RUN_GROUP"):
            patch.delenv(name, raising=False)
        yield root


SUBSET = re.compile(r"cifar10-jpeg/(train/[^/]+/00\d\d|test/[^/]+/00[01]\d)\.jpg$")  # 100 + 20 per class


@contextmanager
def built_once(tmp_path_factory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder shared by every pytest-xdist worker of this session (``<basetemp>/../<name>``): the first worker
    builds it (``fresh`` is True) while the others wait on a file lock, then all use it (the pytest-xdist recipe for
    session fixtures that must run once)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        fresh = not (folder / ".built").exists()
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield folder, fresh
        (folder / ".built").touch()


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory) -> Path:
    """Real CIFAR-10 images from the JPEG copy in ../shared/data: the first 100 training and 20 test images of
    each class (1,000 / 200), unpacked once per session (skips where the archive is absent). Every test runs on
    these: a process then decodes (or loads from the cache) 1,200 images, not 60,000."""
    if not ARCHIVE.is_file():
        pytest.skip(f"the JPEG CIFAR-10 archive is not at {ARCHIVE} (../shared/data beside the repo)")
    with built_once(tmp_path_factory, "cifar") as (root, fresh):
        if fresh:
            with tarfile.open(ARCHIVE) as tar:
                tar.extractall(root, members=(m for m in tar if m.isdir() or SUBSET.search(m.name)), filter="data")
    return root / "cifar10-jpeg"


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def copy_images(cifar: Path, root: Path, train: int, test: int) -> Path:
    """A 10-class image folder at ``root`` with the first ``train``/``test`` real JPEGs of each class."""
    for split, count in (("train", train), ("test", test)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                shutil.copy(cifar / split / name / f"{i:04d}.jpg", root / split / name / f"{i:04d}.jpg")
    return root


@pytest.fixture(scope="session")
def small_folder(cifar_subset, tmp_path_factory) -> Path:
    """A 10-class image folder of real CIFAR-10 JPEGs: 12 train and 4 test images per class."""
    return copy_images(cifar_subset, tmp_path_factory.mktemp("small"), 12, 4)


def run_cli(*args: str, script: str = "train/run.py", timeout: float = 900, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, from the repo root, capturing its output; ``env`` adds variables."""
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=os.environ | (env or {}), **kwargs)


def call_cli(*args: str, script: str = "train/run.py", env: dict[str, str] | None = None) -> SimpleNamespace:
    """``run_cli`` without the process: the entry point's ``main(args)`` called in this worker, from the repo root,
    with ``env`` added to the environment, its stdout and stderr captured; ``returncode``, ``stdout``, ``stderr``.

    Each ``python script`` costs ~4 s of CPU importing torch, timm and W&B and starting W&B's service: on two cores
    the suite's ~150 of them were a quarter of its time. Tests whose subject is the program's work (its files, its
    W&B record, its messages) call it here; the command-line path itself (``__main__`` blocks, signals, exit codes,
    fresh-process behaviour) is proved through ``run_cli`` by the tests about it."""
    import importlib
    import io
    from contextlib import redirect_stderr, redirect_stdout

    name = Path(script).with_suffix("").as_posix().replace("/", ".")
    module = importlib.import_module(name) if not name.startswith("sweeps.") else _load_file(REPO / script)
    # W&B reads its WANDB_* variables once per process (its first wandb.init): a test that sets them gets a W&B
    # set up afresh, and the next test one set up from the session's variables again
    fresh_wandb = any(k.startswith("WANDB_") and os.environ.get(k) != v for k, v in (env or {}).items())
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        if fresh_wandb:
            _wandb_teardown()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    code = module.main(list(args))
                except SystemExit as exit:  # argparse's --help
                    code = exit.code
        finally:
            if fresh_wandb:
                _wandb_teardown()
    return SimpleNamespace(returncode=code or 0, stdout=out.getvalue(), stderr=err.getvalue())


def _load_file(path: Path):
    """A script of a folder that is no package (``sweeps/``: W&B's sweeps engine owns the name ``sweeps``), loaded
    from its file once under a name of its own."""
    import importlib.util

    name = f"_cli_{path.parent.name}_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _wandb_teardown() -> None:
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user who set nothing for W&B but its folder: W&B's data folder is its default, under
    ``home`` (``~/.local/share/wandb``), as on a fresh machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    return env | {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"),
                  "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}


REAL_RUN = ["--train_subset=1000", "--test_subset=200", "--epochs=2", "--batch_size=50", "--explain_samples=8",
            "--probe_images=10", "--run_name=real-run"]


@pytest.fixture(scope="session")
def trained(cifar_subset, tmp_path_factory) -> dict:
    """The one real training run the train, explain, probe, trust and offline-sync tests share: 2 epochs on 1,000
    real training images and 200 test images on the CPU, default recipe otherwise (lr from the batch, warm-up a
    fifth of the run), explain and probes on, W&B offline in a folder of its own with nothing else set."""
    with built_once(tmp_path_factory, "trained") as (root, fresh):
        out, wandb_dir, home = root / "out", root / "wandb-dir", root / "home"
        env = user_env(home) | {"WANDB_DIR": str(wandb_dir)}
        if fresh:
            wandb_dir.mkdir()
            home.mkdir()
            done = subprocess.run([sys.executable, "train/run.py", "--data_dir", str(cifar_subset), *REAL_RUN,
                                   f"--out_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=1200,
                                  env=env)
            assert done.returncode == 0, done.stderr[-3000:]
            (root / "output.json").write_text(json.dumps({"stdout": done.stdout, "stderr": done.stderr}))
    result = SimpleNamespace(returncode=0, **json.loads((root / "output.json").read_text()))
    summary = json.loads((out / "summary.json").read_text())
    return {"result": result, "out": out, "summary": summary, "run_dir": Path(summary["wandb_run_dir"]),
            "wandb_dir": wandb_dir / "wandb", "home": home, "env": env}


def wandb_records(run_dir: str | Path) -> list[dict]:
    """Every record of an offline W&B run, read back with W&B's own ``wandb leet inspect --json``."""
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wandb_summary(run_dir: str | Path) -> dict:
    """The run's state, config and summary from ``wandb leet inspect --summary --json``."""
    out = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(run_dir)], capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def logged_summary(records: list[dict]) -> dict:
    """The run's summary as its records build it, a table's fields flattened as in history rows
    (``explain/sanity.nrows``)."""
    summary: dict = {}
    for record in records:
        if record["type"] == "summary":
            for key, value in record["summary"].get("update", {}).items():
                if isinstance(value, dict):
                    summary.update({f"{key}.{field}": v for field, v in value.items()})
                else:
                    summary[key] = value
    return summary


def history(records: list[dict]) -> list[dict]:
    """The logged history rows, in order."""
    return [r["history"]["item"] for r in records if r["type"] == "history"]


@pytest.fixture(scope="session")
def patch_net():
    """``tests.test_cam.TinyNet`` trained for two epochs on images whose class is set only by a coloured patch
    (~1 s on the CPU): enough to read the class off the patch. The CAM and trust tests share it."""
    import torch

    from tests.test_cam import TinyNet, patch_images

    torch.manual_seed(0)
    images, labels, _ = patch_images(1024, seed=0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        for batch in torch.randperm(len(images)).split(64):
            loss = torch.nn.functional.cross_entropy(model(images[batch].float() / 255), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
