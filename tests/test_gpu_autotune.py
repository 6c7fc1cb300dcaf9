"""On CUDA: every autotuning mode (statex.ops.autotune) gives the results of the torch path, and the parallel
prewarm compiles a workload that the run then uses. Each mode runs in its own process, since Triton's
autotuners keep their choices per process. Skipped without CUDA and flash-linear-attention."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from statex.ops import backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not backends.fla_available(),
                                reason="needs CUDA and flash-linear-attention")

_SCRIPT = r"""
import json, sys, torch, statex
from statex.ops import autotune, backends, prewarm
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
        backends.set_backend(backend)
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


@pytest.mark.parametrize("mode,prewarm", [("full", True), ("fast", True), ("off", False)])
def test_every_mode_matches_the_torch_path(tmp_path, mode, prewarm):
    env = {**os.environ, "STATEX_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
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
