"""What the CUDA tests share: the fast kernels (``statex.runtime.dispatch`` with backend ``fla``: a kernel that
cannot run raises instead of falling back) against the pure-torch path. The tests that use these skip without CUDA
and flash-linear-attention (CI has neither); on a GPU machine ``pytest -m cuda`` runs only them."""
import pytest
import torch

import statex
from statex import runtime
from statex.runtime import dispatch

CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available() or not dispatch.fla_available(),
                                                   reason="needs CUDA and flash-linear-attention")]


def requires_cuda(test):
    """Marks a test ``cuda`` (``pytest -m cuda`` selects them) and skips it without CUDA and fla."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test
TOLERANCE = 1e-2  # relative error ||fast - ref|| / ||ref|| allowed for bf16 inputs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_both(fn, inputs: list[torch.Tensor], fast_dtype=torch.bfloat16, float_args=(), noise: bool = False):
    """fn on the fast path with inputs cast to fast_dtype, and on the torch path in fp32 (the same rounded
    values, upcast). Returns {name: relative error} for outputs and input gradients; with noise=True also
    {name: relative change} that rounding the inputs to fast_dtype alone causes in the fp32 torch path."""
    fast_in = [x.to(fast_dtype if i not in float_args else torch.float32).detach().requires_grad_()
               for i, x in enumerate(inputs)]
    ref_in = [x.detach().float().requires_grad_() for x in fast_in]
    with runtime.use(backend="fla"):
        fast = outputs_and_grads(fn, fast_in)
    with runtime.use(backend="torch"):
        ref = outputs_and_grads(fn, ref_in)
        exact = outputs_and_grads(fn, [x.detach().float().requires_grad_() for x in inputs]) if noise else None
    errors = {name: rel_err(fast[name], ref[name]) for name in ref}
    if not noise:
        return errors
    return errors, {name: rel_err(ref[name], exact[name]) for name in ref}


def outputs_and_grads(fn, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """fn's outputs and the gradients of a fixed random projection of them w.r.t. every input."""
    outs = fn(*inputs)
    weights = torch.Generator(device=outs[0].device).manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape, device=o.device, generator=weights)).sum() for o in outs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    result = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    result.update({f"grad{i}": g for i, g in enumerate(grads) if g is not None})
    return result


def assert_step_close(fast, ref):
    """Both decode steps compute in fp32 (q, k, v of a bf16 model are upcast: one token's state dominates the
    cost), so output and state agree to fp32 rounding, not bf16's."""
    errors = {"output": rel_err(fast[0], ref[0]), "state": rel_err(fast[1], ref[1])}
    assert fast[0].dtype == ref[0].dtype == torch.float32, (fast[0].dtype, ref[0].dtype)
    assert errors["output"] < 1e-4 and errors["state"] < 1e-4, errors


def small_model(family: str, expanded: bool):
    """A 3-layer model on CUDA in fp32, StateX-expanded on layer 1 when asked."""
    if family == "gla":
        config = statex.gla_config(vocab_size=300, d_model=128, n_layer=3, num_heads=4, use_short_conv=True)
    else:
        config = statex.mamba2_config(vocab_size=300, d_model=128, n_layer=3, d_state=32, headdim=32, ngroups=2)
    model = statex.build_model(config, seed=0)
    if expanded:
        model = statex.expand(model, [1], mode="inherit" if family == "gla" else "preserve")
    return model.cuda().eval()
