"""statex's own Triton causal conv + SiLU (statex.ops.conv.triton_conv) against torch's conv1d in float64: values
and the gradients of x, the weight and the bias. Without a GPU the kernels run under Triton's CPU interpreter; as
the Triton cases of tests/ops/test_ssd.py (whose docstring says how to install Triton for them), skipped where
Triton is absent. On CUDA, also in bf16 through statex.runtime.dispatch against the torch path."""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported (see tests/ops/test_ssd.py)
pytest.importorskip("triton", reason="needs Triton (see tests/ops/test_ssd.py's docstring)")

from fast_path import TOLERANCE, requires_cuda, run_both  # noqa: E402
from statex.ops.conv.triton_conv import BLOCK_D, BLOCK_T, conv_silu  # noqa: E402
from statex.runtime import dispatch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")


def reference(x, weight, bias):
    pre = F.conv1d(F.pad(x.transpose(1, 2), (weight.shape[1] - 1, 0)), weight[:, None, :], bias, groups=x.shape[2])
    return F.silu(pre).transpose(1, 2)


@pytest.mark.parametrize("batch,length,channels,width,with_bias", [
    (2, BLOCK_T + 6, BLOCK_D - 24, 4, True),  # a partial time block and a partial channel block
    (1, 3, 17, 4, False),  # shorter than the kernel
    (2, 2 * BLOCK_T + 2, BLOCK_D + 1, 3, True),  # several blocks both ways, another kernel size
])
def test_values_and_gradients_match_conv1d(batch, length, channels, width, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, channels, generator=g, dtype=torch.float64)
    weight = torch.randn(channels, width, generator=g, dtype=torch.float64)
    bias = torch.randn(channels, generator=g, dtype=torch.float64) if with_bias else None
    dy = torch.randn(batch, length, channels, generator=g, dtype=torch.float64)
    results = []
    for fn, dtype in ((reference, torch.float64), (conv_silu, torch.float32)):
        leaves = [t.detach().to(DEVICE, dtype).requires_grad_() for t in (x, weight, bias) if t is not None]
        y = fn(leaves[0], leaves[1], leaves[2] if with_bias else None)
        (y.double() * dy.to(DEVICE)).sum().backward()
        results.append([y] + [t.grad for t in leaves])
    for name, ref, got in zip(("y", "dx", "dweight", "dbias"), *results):
        error = ((got.double() - ref).norm() / ref.norm()).item()
        assert error < 1e-5, f"{name}: relative error {error:.1e}"


@requires_cuda
@pytest.mark.parametrize("channels,with_bias", [(4352, True), (200, False)])  # Mamba2-1.3B's x, B, C channels
@pytest.mark.parametrize("length", [300, 1000])
def test_cuda_dispatch_matches_torch(channels, with_bias, length):
    def fn(x, weight, bias=None):
        return (dispatch.conv_silu(x, weight, bias, lambda: reference(x, weight, bias)),)

    inputs = [torch.randn(2, length, channels, device="cuda"), torch.randn(channels, 4, device="cuda") * 0.5]
    inputs += [torch.randn(channels, device="cuda")] if with_bias else []
    errors = run_both(fn, inputs, float_args=(1, 2))  # weights stay fp32, as under autocast
    assert max(errors.values()) < TOLERANCE, errors
