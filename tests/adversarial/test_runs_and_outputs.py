"""Resumed runs keep their promises (same settings, fallbacks), and what statex writes is strict JSON, honours
the umask and leaves no temporaries behind."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from adversarial.conftest import ROOT, refused, write_config
from statex.cli import main

TRAIN = ["train", "--init", "model", "--data", "corpus.jsonl", "--seq-len", "32", "--no-progress", "--threads", "1",
         "--save-every", "1", "--keep", "3", "--out", "run"]


def _train(steps, *extra):
    return main([*TRAIN, "--steps", str(steps), *extra])


def test_resume_refuses_changed_settings_and_survives_damage(work, capsys):
    assert _train(2) == 0
    refused(capsys, [*TRAIN, "--steps", "3", "--resume", "--seq-len", "16"], "seq_len was 32", work)
    refused(capsys, [*TRAIN, "--steps", "3", "--resume", "--batch-size", "2"], "keep the global batch", work)
    # a line cut short by a crash, a broken newest config and a trainer.pt without optimizer state
    with open(work / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "lo')
    newest, older = sorted((work / "run" / "checkpoints").iterdir())[-2:][::-1]
    (newest / "model" / "config.json").write_text("{broken")
    torch.save({"step": 1}, older / "trainer.pt")
    with pytest.warns(UserWarning, match="unreadable"):
        assert _train(3, "--resume") == 2  # step 2 broken, step 1 lacks its optimizer state: nothing to resume
    capsys.readouterr()


def test_resume_falls_back_past_a_broken_newest_checkpoint(work, capsys):
    assert _train(2) == 0
    newest = sorted((work / "run" / "checkpoints").iterdir())[-1]
    (newest / "model" / "config.json").write_text("{broken")
    with open(work / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "lo')
    with pytest.warns(UserWarning, match="unreadable"):
        assert _train(3, "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    for line in (work / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_metrics_and_results_are_strict_json(work):
    from statex.strict_json import dumps_strict, sanitise

    record = {"step": 1, "loss": float("nan"), "grad_norm": float("inf")}
    assert sanitise(record) == {"step": 1, "loss": None, "grad_norm": None,
                                "nonfinite": {"loss": "nan", "grad_norm": "inf"}}
    json.loads(dumps_strict([record]), parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert main(["eval", "model", "--tasks", "mqar", "--pairs", "4", "--mqar-lengths", "32", "--n", "2", "--out",
                 "e", "--no-plots"]) == 0
    json.loads((work / "e" / "results.json").read_text(), parse_constant=lambda name: pytest.fail(f"bare {name}"))


def test_stale_temporaries_of_dead_runs_are_cleaned_and_the_umask_is_respected(work):
    from statex import files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = work / "run" / "checkpoints" / f".step-00000001{files.TEMP_MARK}{pid}-{files._HOST}-00000000"
    stale.mkdir(parents=True)
    foreign_host = stale.with_name(f".x{files.TEMP_MARK}{pid}-zzzzzz-00000000")
    foreign_host.mkdir()
    old = os.umask(0o027)
    try:
        assert _train(1) == 0
    finally:
        os.umask(old)
    assert not stale.exists() and foreign_host.exists()  # another host's temporary is never touched
    final = work / "run" / "final"
    assert final.stat().st_mode & 0o777 == 0o750
    assert (final / "model.safetensors").stat().st_mode & 0o777 == 0o640


def test_environment_typos_are_refused_on_every_device(work):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "STATEX_AUTOTUNE": "bogus"}
    done = subprocess.run([sys.executable, "-m", "statex", "inspect", "model"], cwd=work, env=env,
                          capture_output=True, text=True)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "STATEX_AUTOTUNE='bogus' is not one of" in err[0], err


def test_a_legacy_pickle_is_refused_in_one_line_without_warnings(work):
    os.remove(work / "model" / "model.safetensors")
    with open(work / "model" / "pytorch_model.bin", "wb") as handle:
        torch.save({"x": torch.zeros(1)}, handle, _use_new_zipfile_serialization=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "statex", "expand", "model", "out", "--layers", "0"], cwd=work,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_generate_refuses_a_tokenizer_larger_than_the_vocabulary(work, capsys):
    assert main(["tokenizer", "train", "corpus.jsonl", "--vocab-size", "400", "--out", "tok.json"]) == 0
    capsys.readouterr()
    refused(capsys, ["generate", "model", "--prompt", "hi", "--tokenizer", "tok.json"], "wrong tokenizer", work)


def test_an_empty_corpus_yields_no_tokenizer(work, capsys):
    (work / "empty.txt").write_text("   \n")
    refused(capsys, ["tokenizer", "train", "empty.txt", "--vocab-size", "300", "--out", "t.json"], "holds no text",
            work)


def test_a_config_with_a_bad_number_cannot_be_expanded_into_a_broken_model(work, capsys):
    write_config(work / "model", norm_eps="abc")
    refused(capsys, ["expand", "model", "out", "--layers", "0"], "norm_eps must be a number", work)
    shutil.rmtree(work / "model")
