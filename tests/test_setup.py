"""What a new user's set-up leaves inside the repo — the virtual environment, the data sets the README unpacks, the
runs — is ignored by git, so `git status` stays clean and nothing large is committed by accident."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

LEFT_BY_THE_SET_UP = [".venv/bin/python", "cifar10-jpeg/train/cat/0000.jpg", "cifar10-png/train/cat/0001.png",
                      "data/cifar-10-batches-py/data_batch_1", "cifar-10-python.tar.gz",
                      "runs/smoke/last.pt", "wandb/latest-run"]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
@pytest.mark.parametrize("path", LEFT_BY_THE_SET_UP)
def test_what_the_set_up_leaves_in_the_repo_is_ignored_by_git(path):
    done = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, timeout=60)
    assert done.returncode == 0, f"{path} is not ignored by .gitignore"
