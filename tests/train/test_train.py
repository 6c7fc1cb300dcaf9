"""The trainer: schedules, parameter groups, bit-identical resume, DDP equivalence, checkpoints and faults."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import statex
from statex.train import build_param_groups, learning_rate, resolve_config
from conftest import write_corpus


@pytest.fixture
def setup(tmp_path):
    write_corpus(tmp_path / "corpus.jsonl", n=120)
    config = statex.gla_config(257, 32, 2, num_heads=2, use_short_conv=True)
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps(config.to_dict()))
    return tmp_path


def options(root, **overrides):
    values = dict(init=str(root / "init"), data=str(root / "corpus.jsonl"), seq_len=64, batch_size=2, steps=12,
                  lr=3e-3, warmup=2, save_every=4, log_every=1, out=str(root / "run"), progress=False,
                  cache_dir=str(root / "cache"), heldout_sequences=4)
    values.update(overrides)
    return resolve_config({}, values)


def metrics(run_dir, key="loss"):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in lines if key in r]


def test_schedules():
    assert learning_rate(0, 100, 1.0, 0.1, 10, "cosine") == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, 0.1, 10, "cosine") == pytest.approx(1.0)
    assert learning_rate(10, 100, 1.0, 0.1, 10, "cosine") == pytest.approx(1.0)
    assert learning_rate(99, 100, 1.0, 0.1, 10, "cosine") == pytest.approx(0.1)
    assert learning_rate(55, 100, 1.0, 0.0, 10, "constant") == 1.0
    assert learning_rate(70, 100, 1.0, 0.0, 10, "wsd", decay_fraction=0.2) == 1.0
    assert learning_rate(99, 100, 1.0, 0.0, 10, "wsd", decay_fraction=0.2) == pytest.approx(0.0)
    assert 0 < learning_rate(90, 100, 1.0, 0.0, 10, "wsd", decay_fraction=0.2) < 1


def test_weight_decay_only_on_matrices():
    model = statex.build_model(statex.mamba2_config(61, 32, 1, d_state=8, headdim=8))
    decay, no_decay = build_param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_train_writes_final_model_metrics_and_checkpoints(setup):
    summary = statex.train(options(setup, keep=2))
    run = setup / "run"
    assert summary["steps"] == 12 and summary["heldout_loss"] is not None
    losses = metrics(run)
    assert len(losses) == 12 and losses[-1] < losses[0]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(record)
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000008", "step-00000012"]
    final = statex.load_model(run / "final")
    assert final.config.family == "gla"
    state = torch.load(run / "checkpoints" / "step-00000012" / "trainer.pt", weights_only=True)
    assert state["step"] == 12 and state["data_position"] == 24 and state["config"]["lr"] == 3e-3


def test_resume_is_bit_identical(setup):
    statex.train(options(setup, out=str(setup / "straight"), steps=16))
    stopped = statex.train(options(setup, out=str(setup / "pieces"), steps=16, stop_at_step=10, keep=5))
    assert stopped["stopped"] and stopped["steps"] == 10
    assert not (setup / "pieces" / "final").exists()
    resumed = statex.train(options(setup, out=str(setup / "pieces"), steps=16, resume=True, keep=5))
    assert resumed["steps"] == 16
    a = statex.load_model(setup / "straight" / "final").state_dict()
    b = statex.load_model(setup / "pieces" / "final").state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics(setup / "straight") == metrics(setup / "pieces")
    # the run's time goes on across the resume: the checkpoint keeps it and the resumed records continue it
    rows = [json.loads(x) for x in (setup / "pieces" / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows]
    assert all(isinstance(x, float) and x > 0 for x in seconds) and seconds == sorted(seconds)
    saved = torch.load(setup / "pieces" / "checkpoints" / "step-00000010" / "trainer.pt", weights_only=True)
    before = max(r["seconds"] for r in rows if r["step"] <= 10)
    after = min(r["seconds"] for r in rows if r["step"] > 10)
    assert before - 5e-4 <= saved["seconds"] <= after + 5e-4  # the records round to milliseconds


def test_refuses_an_out_dir_of_another_run(setup):
    statex.train(options(setup, steps=4))
    with pytest.raises(statex.StatexError, match="already holds checkpoints"):
        statex.train(options(setup, steps=4))


def test_corrupt_latest_checkpoint_falls_back(setup):
    statex.train(options(setup, steps=8, stop_at_step=8, keep=3))
    latest = setup / "run" / "checkpoints" / "step-00000008" / "model" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:50])
    with pytest.warns(UserWarning, match="falling back"):
        summary = statex.train(options(setup, steps=8, resume=True))
    assert summary["steps"] == 8
    assert json.loads((setup / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 8


def test_nonfinite_loss_stops_or_skips(setup):
    with pytest.raises(statex.TrainingStopped, match="non-finite"):
        statex.train(options(setup, lr=1e30, warmup=0, clip=0, schedule="constant", out=str(setup / "a")))
    with pytest.raises(statex.TrainingStopped, match="in a row skipped"), pytest.warns(UserWarning, match="skipped"):
        statex.train(options(setup, lr=1e30, warmup=0, clip=0, schedule="constant", on_nonfinite="skip",
                             max_skips=2, out=str(setup / "b")))


@pytest.mark.parametrize("precision", ["bf16", "pure-bf16"])
def test_precisions(setup, precision):
    summary = statex.train(options(setup, steps=3, precision=precision, synthetic="mqar:0.5"))
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
    dtype = statex.load_model(setup / "run" / "final", dtype=None).lm_head.weight.dtype
    assert dtype == (torch.bfloat16 if precision == "pure-bf16" else torch.float32)


def test_statex_and_lpt_differ_by_one_flag(setup):
    mamba = statex.mamba2_config(257, 32, 2, d_state=8, headdim=8)
    statex.build_model(mamba, seed=0).save_pretrained(setup / "base")
    common = dict(init=None, model=str(setup / "base"), steps=3, synthetic="mqar:1", data=None)
    lpt = statex.train(options(setup, out=str(setup / "lpt"), **common))
    sx = statex.train(options(setup, out=str(setup / "sx"), expand_layers="0", mode="preserve", **common))
    assert statex.load_model(lpt["final_model"]).config.layers[0].d_state == 8
    expanded = statex.load_model(sx["final_model"]).config
    assert expanded.layers[0].d_state == 32 and expanded.history[-1]["mode"] == "preserve"


def test_vocab_smaller_than_tokenizer_is_refused(setup):
    statex.build_model(statex.gla_config(100, 32, 1, num_heads=2)).save_pretrained(setup / "small")
    with pytest.raises(statex.StatexError, match="wrong tokenizer"):
        statex.train(options(setup, init=None, model=str(setup / "small")))


def test_config_file_and_flag_override(setup, tmp_path):
    (tmp_path / "run.yaml").write_text("steps: 7\nlr: 0.001\nseq-len: 32\n")
    from statex.train import read_config_file

    config = resolve_config(read_config_file(tmp_path / "run.yaml"), {"lr": 0.002, "init": "x", "data": "y"})
    assert (config.steps, config.lr, config.seq_len) == (7, 0.002, 32)
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    with pytest.raises(statex.StatexError, match="unknown training option"):
        resolve_config(read_config_file(tmp_path / "bad.yaml"), {})


def _cli(*args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_two_processes_match_one_process_with_double_batch(setup):
    common = ["--init", str(setup / "init"), "--data", str(setup / "corpus.jsonl"), "--seq-len", "64", "--steps",
              "4", "--lr", "3e-3", "--warmup", "1", "--log-every", "1", "--no-progress", "--cache-dir",
              str(setup / "cache"), "--threads", "1"]
    one = _cli("-m", "statex", "train", *common, "--batch-size", "4", "--out", str(setup / "one"))
    assert one.returncode == 0, one.stderr
    two = _cli("-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "statex", "train", *common,
               "--batch-size", "2", "--out", str(setup / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    torch.testing.assert_close(torch.tensor(metrics(setup / "two")), torch.tensor(metrics(setup / "one")),
                               rtol=1e-5, atol=1e-5)
    a = statex.load_model(setup / "one" / "final").state_dict()
    b = statex.load_model(setup / "two" / "final").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_sigint_writes_a_checkpoint(setup):
    args = ["-m", "statex", "train", "--init", str(setup / "init"), "--data", str(setup / "corpus.jsonl"),
            "--seq-len", "64", "--steps", "100000", "--save-every", "100000", "--log-every", "1", "--no-progress",
            "--out", str(setup / "run"), "--cache-dir", str(setup / "cache")]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((setup / "run" / "metrics.jsonl").exists()
                                          and (setup / "run" / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT received" in err and "--resume" in err
    checkpoints = list((setup / "run" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and int(checkpoints[0].name.split("-")[1]) >= 2


def test_paper_experiment_configs_parse():
    from pathlib import Path

    from statex.train import read_config_file

    root = Path(__file__).parents[2] / "experiments" / "paper"
    configs = {p.stem: resolve_config(read_config_file(p)) for p in sorted(root.glob("*.yaml"))
               if p.stem.endswith(("-lpt", "-statex"))}  # the others are compare specs (tests/compare/test_plans.py)
    assert set(configs) == {"gla-1.3b-lpt", "gla-1.3b-statex", "mamba2-1.3b-lpt", "mamba2-1.3b-statex"}
    for family in ("gla-1.3b", "mamba2-1.3b"):
        lpt, sx = configs[f"{family}-lpt"].to_dict(), configs[f"{family}-statex"].to_dict()
        differing = {k for k in lpt if lpt[k] != sx[k]}
        assert differing <= {"out", "expand_layers", "mode", "heads", "factor"}, differing
        assert sx["expand_layers"] and lpt["expand_layers"] is None
        assert lpt["seq_len"] == 65536 and lpt["steps"] == 20000 and lpt["lr"] == 3e-4


def test_sequence_averaged_loss_weighs_every_sequence_equally():
    from statex.train.loss import weighted_loss

    model = statex.build_model(statex.gla_config(257, 32, 1, num_heads=2), seed=0)
    ids = torch.randint(0, 257, (2, 16))
    labels = ids.clone()
    labels[1, :12] = -100  # the second sequence labels only 4 tokens
    got = weighted_loss(model(ids).logits, labels, torch.ones(2), "sequences")
    logits = model(ids).logits[:, :-1]
    per_seq = [torch.nn.functional.cross_entropy(logits[b], labels[b, 1:], ignore_index=-100) for b in range(2)]
    torch.testing.assert_close(got, (per_seq[0] + per_seq[1]) / 2)
    token_mean = model(ids, labels=labels).loss
    assert not torch.allclose(got, token_mean)
    torch.testing.assert_close(weighted_loss(model(ids).logits, labels, torch.ones(2), "tokens"), token_mean)
