"""Checkpoints across world sizes and wrappings (CPU, gloo): a run checkpointed by N processes (one, DDP or
FSDP2) continues with M processes as the same run, and a rank killed with SIGKILL leaves the last complete
checkpoint to resume from. The optimizer-state conversion (train/optim_state.py) and the ranks' reductions on
their own."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import statex
from statex.train import build_param_groups, optim_state
from statex.train.checkpoint import checkpoint_dirs, load_latest_checkpoint
from conftest import write_corpus

from bench.multi_gpu import worker_pid  # the multi-GPU bench kills ranks the same way

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                    os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
GLOBAL_BATCH = 4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    write_corpus(path / "corpus.jsonl", n=120)
    (path / "init").mkdir()
    config = statex.gla_config(257, 32, 2, num_heads=2, use_short_conv=True)
    (path / "init" / "config.json").write_text(json.dumps(config.to_dict()))
    return path


def _train(root: Path, layout: str, out: Path, steps: int, resume: bool = False, wait: bool = True, **extra):
    """``layout``: "1" (one process), "ddp2" or "fsdp2" (two processes under torchrun); the global batch is
    always GLOBAL_BATCH sequences."""
    world = 1 if layout == "1" else 2
    launcher = ["-m", "statex"] if world == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                                                    "-m", "statex"]
    flags = ["--init", str(root / "init"), "--data", str(root / "corpus.jsonl"), "--seq-len", "64", "--lr", "3e-3",
             "--warmup", "1", "--log-every", "1", "--no-progress", "--cache-dir", str(root / "cache"), "--threads",
             "1", "--save-every", str(extra.get("save_every", 2)), "--steps", str(steps), "--batch-size",
             str(GLOBAL_BATCH // world), "--out", str(out)]
    flags += ["--fsdp"] if layout == "fsdp2" else []
    flags += ["--resume"] if resume else []
    command = [sys.executable, *launcher, "train", *flags]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.fixture(scope="module")
def reference(root):
    out = root / "reference"
    _train(root, "1", out, steps=4)
    return out


@pytest.mark.parametrize("first,then", [("1", "fsdp2"), ("fsdp2", "1"), ("ddp2", "fsdp2"), ("fsdp2", "ddp2")])
def test_a_checkpoint_continues_with_another_world_size(root, reference, first, then):
    out = root / f"{first}-then-{then}"
    _train(root, first, out, steps=2)
    resumed = _train(root, then, out, steps=4, resume=True)
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    torch.testing.assert_close(torch.tensor(_losses(out)), torch.tensor(_losses(reference)), rtol=1e-5, atol=1e-5)
    a, b = (statex.load_model(d / "final").state_dict() for d in (reference, out))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc")
def test_a_rank_killed_with_sigkill_leaves_a_checkpoint_to_resume_from(root):
    out = root / "killed"
    proc = _train(root, "ddp2", out, steps=100_000, wait=False, save_every=1)
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint_dirs(out):
        time.sleep(0.2)
    time.sleep(1.0)  # a few more steps and checkpoints, one perhaps half-written when the kill comes
    pid = worker_pid(out, 1)
    assert pid is not None, "no rank-1 worker found"
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    last = checkpoint_dirs(out)[-1]
    step = int(last.name.split("-")[1])
    assert load_latest_checkpoint(out)[1]["step"] == step  # the newest complete checkpoint reads back
    resumed = _train(root, "ddp2", out, steps=step + 2, resume=True)
    assert f"at step {step}" in resumed.stdout
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in x][-2:] == [step + 1, step + 2]


def test_the_optimizer_state_converts_between_positions_and_names():
    model = statex.build_model(statex.gla_config(64, 16, 2, num_heads=2))
    optimizer = torch.optim.AdamW(build_param_groups(model, 0.1), lr=1e-3)
    ids = torch.randint(0, 64, (1, 8))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    names = optim_state.parameter_names(model, optimizer)
    positions = optimizer.state_dict()
    named = optim_state.to_named(positions, names)
    assert optim_state.is_named(named) and not optim_state.is_named(positions)
    assert set(named["state"]) == {n for group in names for n in group}
    back = optim_state.to_positions(named, names)
    assert back["param_groups"] == positions["param_groups"] and set(back["state"]) == set(positions["state"])
    for key, value in positions["state"].items():
        assert torch.equal(back["state"][key]["exp_avg"], value["exp_avg"])
    other = statex.build_model(statex.gla_config(64, 16, 1, num_heads=2))
    other_optimizer = torch.optim.AdamW(build_param_groups(other, 0.1), lr=1e-3)
    with pytest.raises(statex.CheckpointError, match="does not hold this model's parameters"):
        optim_state.load(other, other_optimizer, named, sharded=False)


def _reduce_on_rank(rank: int, world: int, port: int, results) -> None:
    from statex.train import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    env = distributed.setup("cpu")
    try:
        results[rank] = (env.maximum(float(rank + 1) * 1.5), env.mean(float(rank)), env.any(rank == 1))
    finally:
        distributed.teardown()


def test_the_reductions_agree_on_every_rank():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:  # a free port for the gloo rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_reduce_on_rank, args=(2, port, results), nprocs=2, join=True)
        assert dict(results) == {0: (3.0, 0.5, True), 1: (3.0, 0.5, True)}
