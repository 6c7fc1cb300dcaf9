"""No command deletes or overwrites what the user did not name; --force replaces atomically; one writer per run."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import statex
from adversarial.conftest import ROOT, refused, snapshot


def test_an_empty_destination_is_refused_and_the_current_directory_survives(work, capsys):
    refused(capsys, ["expand", "model", "", "--layers", "0", "--force"], "the output path is empty", work)


@pytest.mark.parametrize("dst, fragment", [(".", "is the current directory"), ("..", "above the current one")])
def test_the_current_directory_and_its_parents_are_never_an_output(work, capsys, dst, fragment):
    refused(capsys, ["expand", "model", dst, "--layers", "0", "--force"], fragment, work.parent)


def test_a_destination_that_contains_or_lies_inside_the_source_is_refused(work, capsys):
    (work / "p").mkdir()
    os.rename(work / "model", work / "p" / "model")
    refused(capsys, ["expand", "p/model", "p", "--layers", "0", "--force"], "contains the input", work)
    refused(capsys, ["expand", "p/model", "p/model/sub", "--layers", "0", "--force"], "lies inside the input", work)
    refused(capsys, ["train", "--init", "p/model", "--data", "corpus.jsonl", "--out", "p", "--steps", "1"],
            "contains the input", work)
    refused(capsys, ["eval", "p/model", "--tasks", "mqar", "--out", "p/model/eval"], "lies inside the input", work)


def test_an_existing_output_needs_force_and_force_replaces_it_whole(work, capsys):
    (work / "out").mkdir()
    (work / "out" / "old.txt").write_text("old output")
    refused(capsys, ["expand", "model", "out", "--layers", "1"], "already exists (use --force", work)
    assert main_ok(["expand", "model", "out", "--layers", "1", "--force"]) == 0
    assert not (work / "out" / "old.txt").exists() and (work / "out" / "model.safetensors").is_file()
    assert statex.load_model(work / "out").config.layers[1].num_heads == 1
    assert [p.name for p in work.iterdir() if ".statex-tmp-" in p.name] == []


def main_ok(argv):
    from statex.cli import main

    return main([str(a) for a in argv])


def test_a_failed_forced_replacement_leaves_the_old_output_whole(work, capsys, monkeypatch):
    assert main_ok(["expand", "model", "out", "--layers", "1"]) == 0
    before = snapshot(work)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(args[1]))

    monkeypatch.setattr("statex.io.own.save_file", full_disk)
    refused(capsys, ["expand", "model", "out", "--layers", "0", "--force"], "No space left on device", work)
    assert snapshot(work) == before


def test_killing_a_forced_expand_at_any_moment_leaves_the_old_or_the_new_output(work):
    """SIGKILL at random moments of ``expand --force`` over an existing output: the output directory is always a
    complete model (the old one or the new one), never half of each and never missing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "statex", "expand", "model", "out", "--layers", "1", "--force"]
    subprocess.run(command[:-1], cwd=work, env=env, check=True, capture_output=True)
    rng = random.Random(0)
    for _ in range(4):
        process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 3.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        model = statex.load_model(work / "out")  # complete: config and weights agree
        assert model.config.layers[1].num_heads == 1
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    leftovers = [p.name for p in work.iterdir() if ".statex-tmp-" in p.name]
    assert leftovers == [], leftovers  # the killed runs' temporaries were cleaned by the next run


def test_a_second_training_run_on_the_same_directory_is_refused(work, capsys):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "statex", "train", "--init", "model", "--data", "corpus.jsonl",
                              "--seq-len", "32", "--steps", "100000", "--save-every", "100000", "--no-progress",
                              "--out", "run", "--threads", "1"], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (work / "run" / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.2)
        line = refused(capsys, ["train", "--init", "model", "--data", "corpus.jsonl", "--seq-len", "32", "--steps",
                                "2", "--out", "run", "--resume"], "in use by another statex train", work / "model")
        assert f"pid {first.pid}" in line
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM  # the holder checkpointed and stopped


def test_an_existing_tokenizer_is_replaced_only_with_force(work, capsys):
    (work / "tok").mkdir()
    (work / "tok" / "tokenizer.json").write_text("{}")
    refused(capsys, ["tokenizer", "train", "corpus.jsonl", "--vocab-size", "300", "--out", "tok"],
            "already exists (use --force", work)
    assert main_ok(["tokenizer", "train", "corpus.jsonl", "--vocab-size", "300", "--out", "tok", "--force"]) == 0
    assert json.loads((work / "tok" / "tokenizer.json").read_text())["model"]["type"] == "BPE"


def test_a_training_directory_full_of_other_files_is_refused(work, capsys):
    refused(capsys, ["train", "--init", "model", "--data", "corpus.jsonl", "--out", work / "sub" / ".."],
            "is the current directory", work)
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("x")
    refused(capsys, ["train", "--init", "model", "--data", "corpus.jsonl", "--out", "mine", "--steps", "1"],
            "is not a statex training run", work)
