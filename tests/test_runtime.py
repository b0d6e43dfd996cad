"""What every run records about where it ran: the commit, also where no git repository is at hand."""

from __future__ import annotations

import subprocess

import pytest

from pgolf import runtime


def test_git_commit_without_git_is_the_commit_the_caller_names(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(runtime.subprocess, "run", no_git)
    monkeypatch.delenv("PGOLF_GIT_COMMIT", raising=False)
    assert runtime.git_commit() is None
    monkeypatch.setenv("PGOLF_GIT_COMMIT", "0123abc")
    assert runtime.git_commit() == "0123abc"


def test_git_commit_in_a_checkout_is_its_head_whatever_the_env_says(monkeypatch):
    head = subprocess.run(["git", "-C", str(runtime.Path(runtime.__file__).parents[2]), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    monkeypatch.setenv("PGOLF_GIT_COMMIT", "0123abc")
    assert runtime.git_commit() == head.stdout.strip()
