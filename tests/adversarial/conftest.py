"""The promise every hostile input is held to: exit status 2, exactly one line on stderr, no traceback, and
nothing written or changed anywhere under the test's directory (the inputs and every file beside them)."""
import hashlib
import re
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import statex
from statex.cli import main

ROOT = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (files), link target or mode: any change shows."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file() and path.stat().st_size > 2**26:  # a sparse giant: its size and time stand for it
            found[rel] = f"size:{path.stat().st_size}:{path.stat().st_mtime_ns}"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "dir"
    return found


_PROGRESS = re.compile(r"\d+%\||\[\d\d:\d\d")  # a progress bar's line (tqdm), not a message


def refused(capsys, argv, fragment: str, watch: Path) -> str:
    """Run ``statex ARGV`` in this process; assert exit 2, one stderr line containing ``fragment`` and an
    unchanged ``watch`` tree. Returns the line."""
    before = snapshot(watch)
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip() and not _PROGRESS.search(line)]
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("statex: error: "), err
    assert fragment in err[0], err
    assert snapshot(watch) == before, "the refused command wrote or changed files"
    return err[0]


def run_limited(argv, cwd: Path, memory_gib: float = 6.0, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m statex ARGV`` in a child process whose address space is capped (``ulimit -v``), so that a
    request that tried to allocate what it cannot hold would fail here instead of exhausting the machine."""
    limit = int(memory_gib * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "statex", *map(str, argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=cap, env=env)


def assert_one_line_refusal(done: subprocess.CompletedProcess, fragment: str) -> None:
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(err) == 1 and "Traceback" not in done.stderr and fragment in err[0], err


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Path:
    """A tiny GLA checkpoint on disk (byte vocabulary), shared read-only by the tests that copy it."""
    path = tmp_path_factory.mktemp("model") / "gla"
    config = statex.gla_config(vocab_size=257, d_model=32, n_layer=2, num_heads=2, use_short_conv=True)
    statex.build_model(config, seed=0).save_pretrained(path)
    return path


@pytest.fixture
def work(tmp_path, saved_model, monkeypatch) -> Path:
    """A fresh directory holding a copy of the model (``work/model``), a corpus and a bystander file; the
    test runs with it as the current directory."""
    import shutil

    shutil.copytree(saved_model, tmp_path / "model")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": f"document {i} " * 20}) + "\n"
                                                   for i in range(40)))
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(directory: Path, **changes) -> Path:
    """A copy of the tiny model's config.json with fields changed (a value of ``...`` removes the field)."""
    data = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    (directory / "config.json").write_text(json.dumps(data))
    return directory


def tensor_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
