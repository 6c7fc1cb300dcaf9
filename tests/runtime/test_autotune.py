"""The autotuning plumbing (statex.runtime.autotune, statex.runtime.prewarm) on CPU, with a stand-in for Triton's
Autotuner: what each mode patches, the compile sharding of prewarm workers, the parallel prewarm driver and its
cache marker; on CUDA every mode against the torch path (skipped without CUDA and flash-linear-attention)."""
import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import statex
from fast_path import requires_cuda
from statex import runtime
from statex.runtime import autotune, prewarm


class _Config:
    def __init__(self, block):
        self.block, self.pre_hook = block, None

    def all_kwargs(self):
        return {"BLOCK": self.block}


class _Kernel:
    def __init__(self):
        self.calls = []  # (BLOCK, compiled only)

    def run(self, *args, grid, warmup, **kwargs):  # Triton's JITFunction.run: grid and warmup are required
        self.calls.append((kwargs["BLOCK"], warmup))
        return kwargs["BLOCK"]


def _stand_in():
    """A class with the parts of Triton's Autotuner that the patches touch, its calling convention (a launch is
    ``tuner[grid](*args)``, which calls ``run(*args, grid=grid, warmup=False)``, and run passes both on to the
    kernel) and its run logic: prune, time every surviving candidate with ``do_bench`` when more than one
    survives, run the fastest."""

    class Autotuner:
        def __init__(self, n=6):
            self.configs = [_Config(b) for b in range(n)]
            self.fn, self.arg_names, self._do_bench, self.nargs = _Kernel(), ["x"], None, None
            self.timed = []

        @property
        def do_bench(self):
            return lambda call, quantiles=None: self.timed.append("default") or call() or 1.0

        def prune_configs(self, kwargs):
            return [c for c in self.configs if c.block % 2 == 0]  # prunes odd blocks

        def __getitem__(self, grid):
            return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)

        def run(self, *args, **kwargs):
            pruned = self.prune_configs(kwargs)
            best = pruned[0]
            if len(pruned) > 1:
                times = {c: self.do_bench(lambda c=c: self.fn.run(*args, **kwargs, **c.all_kwargs()))
                         for c in pruned}
                best = min(times, key=times.get)
            return self.fn.run(*args, **kwargs, **best.all_kwargs())

    return Autotuner


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.delenv("STATEX_AUTOTUNE", raising=False)
    monkeypatch.setenv("STATEX_CACHE_DIR", str(tmp_path / "statex-cache"))
    return tmp_path / "statex-cache" / "triton"


def test_off_runs_the_first_surviving_candidate_untimed(cache):
    cls = _stand_in()
    assert autotune.configure("off", autotuner_class=cls) == "off"
    tuner = cls()
    assert tuner[(4,)](1) == 0 and tuner.timed == [] and tuner.fn.calls == [(0, False)]
    assert autotune.configure("full", autotuner_class=cls) == "full"  # restores Triton's behaviour
    tuner = cls()
    tuner[(4,)](1)
    assert tuner.timed == ["default"] * 3


def test_fast_times_candidates_briefly(cache, monkeypatch):
    seen = []
    testing = types.ModuleType("triton.testing")
    testing.do_bench = lambda call, warmup, rep, quantiles=None: seen.append((warmup, rep)) or call() or 1.0
    triton = types.ModuleType("triton")
    triton.testing = testing
    monkeypatch.setitem(sys.modules, "triton", triton)
    monkeypatch.setitem(sys.modules, "triton.testing", testing)
    cls = _stand_in()
    autotune.configure("fast", autotuner_class=cls)
    tuner = cls()
    assert tuner[(4,)](1) == 0
    assert seen == [autotune.FAST_TIMING_MS] * 3 and tuner.timed == []
    own = cls()
    own._do_bench = lambda call, quantiles=None: 7.0  # an autotuner with its own benchmarker keeps it
    assert own.do_bench(None) == 7.0
    autotune.configure("full", autotuner_class=cls)
    assert cls().do_bench is not None and seen == [autotune.FAST_TIMING_MS] * 3


def test_configure_points_triton_at_the_statex_cache_and_reads_the_environment(cache, monkeypatch):
    assert autotune.configure(None, autotuner_class=_stand_in()) == "fast"  # the default
    with runtime.use(autotune="off"):  # STATEX_AUTOTUNE=off, as the settings read it
        assert autotune.configure(None, autotuner_class=_stand_in()) == "off"
    assert autotune.triton_cache_dir() == cache and cache.is_dir()
    with pytest.raises(ValueError, match="not one of full, fast, off"):
        autotune.configure("fastest", autotuner_class=_stand_in())


def test_a_prewarm_worker_compiles_its_share_of_the_candidates(cache):
    cls = _stand_in()
    autotune.shard_compilation(1, 2, autotuner_class=cls)
    tuner = cls(n=10)  # survivors after pruning: blocks 0, 2, 4, 6, 8; worker 1 of 2 takes 2 and 6
    assert tuner[(4,)](1) == 2
    assert tuner.fn.calls == [(2, True), (6, True), (2, False)] and tuner.timed == []
    autotune.configure("full", autotuner_class=cls)
    assert cls(n=10)[(4,)](1) == 0  # the sharding is undone


def test_a_prewarm_worker_skips_a_candidate_that_cannot_launch(cache):
    cls = _stand_in()
    autotune.shard_compilation(1, 2, autotuner_class=cls)
    tuner = cls(n=10)
    launch = tuner.fn.run

    def run(*args, grid, warmup, **kwargs):
        if kwargs["BLOCK"] == 2 and not warmup:
            raise RuntimeError("out of resource: shared memory")
        return launch(*args, grid=grid, warmup=warmup, **kwargs)

    tuner.fn.run = run
    assert tuner[(4,)](1) == 6  # its other compiled candidate
    autotune.configure("full", autotuner_class=cls)


def _work():
    config = statex.gla_config(61, 32, 3, num_heads=2)
    config.layers[1] = statex.GLASpec(num_heads=1, key_dim=16, value_dim=32)
    return prewarm.Workload(config.to_dict(), batch=2, seq_len=64, train=True)


def test_workload_keeps_one_layer_per_distinct_spec():
    work = _work()
    reduced = prewarm.distinct_layers(work.model)
    assert len(reduced["layers"]) == 2 and reduced["layers"][0] == work.model["layers"][0]
    assert statex.ModelConfig.from_dict(reduced).n_layer == 2
    assert work.key() == _work().key() != prewarm.Workload(work.model, batch=3, seq_len=64, train=True).key()


_WORKER = ("import os, sys, time; i = sys.argv[sys.argv.index('--index') + 1]; "
           "assert os.environ['FLA_CACHE_RESULTS'] == '0'; "
           "time.sleep(float(os.environ.get('STANDIN_SLEEP', '0'))); "
           "open(os.path.join(os.environ['TRITON_CACHE_DIR'], 'kernel-' + i), 'w').write('x')")


def test_prewarm_runs_workers_in_parallel_and_is_not_repeated(cache):
    command = [sys.executable, "-c", _WORKER]
    first = prewarm.prewarm(_work(), workers=3, progress=False, worker_command=command)
    assert not first["skipped"] and first["workers"] == 3 and first["stopped"] == 0
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("kernel-")) == ["kernel-0", "kernel-1",
                                                                                       "kernel-2"]
    assert prewarm.prewarm(_work(), workers=3, progress=False, worker_command=command)["skipped"]


def test_prewarm_stops_at_its_limit_and_leaves_no_marker(cache, monkeypatch, capsys):
    monkeypatch.setenv("STANDIN_SLEEP", "30")
    summary = prewarm.prewarm(_work(), workers=2, limit_s=1.0, progress=True,
                               worker_command=[sys.executable, "-c", _WORKER])
    assert summary["stopped"] == 2 and summary["seconds"] < 20
    assert "prewarm done" in capsys.readouterr().out
    monkeypatch.setenv("STANDIN_SLEEP", "0")
    assert not prewarm.prewarm(_work(), workers=2, progress=False,
                                worker_command=[sys.executable, "-c", _WORKER])["skipped"]


def test_train_flag_is_checked():
    with pytest.raises(statex.StatexError, match="--autotune must be one of full, fast, off"):
        statex.train(statex.TrainConfig(init="x", synthetic="mqar:1", autotune="sometimes"))


def test_prewarm_starts_in_the_background(cache, monkeypatch):
    monkeypatch.setenv("STANDIN_SLEEP", "2")
    command = [sys.executable, "-c", _WORKER]
    started = time.time()
    handle = prewarm.start(_work(), workers=2, progress=False, worker_command=command)
    assert time.time() - started < 1.5 and handle.processes.running() == 2  # returns while the workers run
    summary = handle.wait()
    assert summary["stopped"] == summary["failed"] == 0 and not summary["skipped"] and summary["seconds"] >= 2
    assert prewarm.start(_work(), workers=2, progress=False, worker_command=command) is None  # marker written


def test_begin_in_mode_off_starts_nothing(cache):
    assert prewarm.begin(_work(), "off", progress=False, worker_command=[sys.executable, "-c", "raise SystemExit(3)"]
                         ) is None
    assert not (cache / "statex-prewarm").exists()
    autotune.configure("full")  # undo the patch where Triton is installed


def test_a_worker_out_of_gpu_memory_tries_again(monkeypatch):
    import torch

    calls = []

    def workload(work):
        calls.append(work)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(prewarm, "run_workload", workload)
    assert prewarm._attempt_workload("w", last=False) is False  # freed, to be tried again
    assert prewarm._attempt_workload("w", last=False) is True and calls == ["w", "w"]
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):
        prewarm._attempt_workload("w", last=True)


def test_forward_workloads_cover_lengths_divisible_by_16_and_the_others():
    model = _work().model
    aligned, ragged = prewarm.forward_workloads(model, 8, 2050, decode=True)
    assert (aligned.seq_len, ragged.seq_len) == (2048, 2047) and aligned.seq_len % 16 == 0 != ragged.seq_len % 16
    assert aligned.forward and ragged.forward and aligned.decode_batch == 8 and ragged.decode_batch == 0
    assert prewarm.forward_workloads(model, 1, 5, decode=False)[0].seq_len == 32  # never shorter than a chunk


def test_one_prewarm_for_several_workloads(cache):
    seen = cache.parent / "seen"
    worker = ("import json, sys; spec = sys.argv[sys.argv.index('--spec') + 1]; "
              f"open({str(seen)!r}, 'a').write(str(len(json.load(open(spec)))) + '\\n')")
    command = [sys.executable, "-c", worker]
    first, second = _work(), prewarm.Workload(_work().model, batch=4, seq_len=64, train=True)
    summary = prewarm.prewarm([first, second, first], workers=2, progress=False, worker_command=command)
    assert summary["failed"] == 0 and seen.read_text().split() == ["2", "2"]  # each worker got both, once each
    third = prewarm.Workload(_work().model, batch=8, seq_len=64, train=True)
    handle = prewarm.start([first, second, third], workers=1, progress=False, worker_command=command)
    assert [w.batch for w in handle.works] == [8]  # only the one not prewarmed yet
    handle.wait()
    assert prewarm.start([first, third], progress=False, worker_command=command) is None


def test_the_workload_key_ignores_what_does_not_shape_kernels():
    work = _work()
    renamed = {**work.model, "history": [{"op": "statex-expand", "mode": "inherit"}], "initializer_range": 0.5}
    assert prewarm.Workload(renamed, work.batch, work.seq_len, train=True).key() == work.key()
    wider = {**work.model, "d_model": work.model["d_model"] * 2}
    assert prewarm.Workload(wider, work.batch, work.seq_len, train=True).key() != work.key()


def test_the_worker_runs_every_workload_of_its_spec(tmp_path, monkeypatch, capsys):
    import json as json_module

    import torch

    works = [_work(), prewarm.Workload(_work().model, batch=4, seq_len=32, train=True)]
    spec = tmp_path / "spec.json"
    spec.write_text(json_module.dumps([dataclasses.asdict(w) for w in works]))
    ran, sharded = [], []
    monkeypatch.setattr(autotune, "shard_compilation", lambda index, count: sharded.append((index, count)))
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(prewarm, "run_workload", lambda work: ran.append(work))
    prewarm._worker_main(["--index", "1", "--count", "3", "--spec", str(spec)])
    assert sharded == [(1, 3)] and ran == works
    assert "workload 2 of 2" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_the_prewarm_passes_use_every_kernel_variant_evaluation_uses(monkeypatch, family):
    """A chunk kernel given an initial state is another Triton variant than one without: evaluation reads long
    prompts in pieces with the state carried, so the prewarm's inference passes must run both."""
    import torch

    from statex.eval.common import token_logprobs
    from statex.runtime import dispatch

    seen = set()
    for name in ("gla_chunk", "ssd_chunk"):
        original = getattr(dispatch, name)

        def recording(*args, _original=original, _name=name, **kwargs):
            initial = kwargs.get("initial_state", args[5] if _name == "gla_chunk" else args[6])
            seen.add((_name, initial is None))
            return _original(*args, **kwargs)

        monkeypatch.setattr(dispatch, name, recording)
    make = statex.gla_config if family == "gla" else statex.mamba2_config
    extra = dict(num_heads=2) if family == "gla" else dict(d_state=8, headdim=16)
    model = statex.build_model(make(64, 32, 1, **extra), seed=0).eval()
    ids = torch.randint(0, 64, (2, 64))
    with torch.no_grad():
        prewarm.inference_passes(model, ids, forward=True, decode_batch=2)
        warmed, _ = set(seen), seen.clear()
        token_logprobs(model, torch.randint(0, 64, (2, 128)), chunk=64)  # MQAR, perplexity
        model.generate(ids, max_new_tokens=3, prefill_chunk=32)  # passkey, NIAH
    assert seen and seen <= warmed, (seen, warmed)


# ---- CUDA: every mode gives the torch path's results; the prewarm compiles what the run uses -------------------
# Each mode runs in its own process, since Triton's autotuners keep their choices per process.

_SCRIPT = r"""
import json, sys, torch, statex
from statex import runtime
from statex.runtime import autotune, prewarm
mode, warm_first = sys.argv[1], sys.argv[2] == "1"
configs = {
    "gla": statex.gla_config(512, 256, 2, num_heads=2, use_short_conv=True),
    "mamba2": statex.mamba2_config(512, 256, 2, d_state=64, headdim=64),
}
configs["gla"].layers[1] = statex.GLASpec(num_heads=1, key_dim=128, value_dim=256, use_short_conv=True)
errors = {}
for family, config in configs.items():
    work = prewarm.Workload(config.to_dict(), batch=2, seq_len=300, train=True, precision="bf16")
    summary = prewarm.prepare(work, mode, progress=False) if warm_first else autotune.configure(mode)
    ids = torch.randint(0, 512, (2, 300), device="cuda")
    grads = {}
    for backend in ("fla", "torch"):
        runtime.configure(backend=backend)
        model = statex.build_model(config, device="cuda", seed=0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=backend == "fla"):
            loss = model(ids, labels=ids).loss
        loss.backward()
        grads[backend] = (loss.detach().float(), [p.grad.float() for p in model.parameters()])
    (lf, gf), (lt, gt) = grads["fla"], grads["torch"]
    flat_f, flat_t = torch.cat([g.flatten() for g in gf]), torch.cat([g.flatten() for g in gt])
    errors[family] = {"loss": abs(float(lf - lt)) / abs(float(lt)),
                      "grads": float((flat_f - flat_t).norm() / flat_t.norm())}
print("RESULT " + json.dumps(errors))
"""


@requires_cuda
@pytest.mark.parametrize("mode,prewarm", [("full", True), ("fast", True), ("off", False)])
def test_cuda_every_mode_matches_the_torch_path(tmp_path, mode, prewarm):
    env = {**os.environ, "STATEX_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode, "1" if prewarm else "0"], capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.split("RESULT ")[-1])
    print(mode, errors)
    # bf16 autocast against fp32: the loss within 1%, all gradients together within 5%
    assert all(e["loss"] < 1e-2 and e["grads"] < 5e-2 for e in errors.values()), errors
    if prewarm:
        markers = list((tmp_path / "cache" / "triton" / "statex-prewarm").glob("*.json"))
        assert len(markers) == 2
