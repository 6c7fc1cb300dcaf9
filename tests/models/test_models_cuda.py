"""Whole models on CUDA: the fast kernels against the torch path (logits, greedy generation through CUDA graphs
and eagerly, statex's own SSD kernel in generation), a training forward from a carried state (state passing), and
a left-padded batch with ``attention_mask``, on original and StateX-expanded GLA and Mamba2 models. Skipped without
CUDA and flash-linear-attention."""
import pytest
import torch

from fast_path import CUDA_MARKS, rel_err, small_model
from statex import runtime

pytestmark = CUDA_MARKS


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_generation_fast_path_equals_torch_path(family, expanded):
    _generation_matches_torch_path(small_model(family, expanded))


def _generation_matches_torch_path(model):
    prompt = torch.randint(0, 300, (2, 100), generator=torch.Generator().manual_seed(1)).cuda()
    outputs, logits = {}, {}
    for name in ("fla", "torch"):
        with runtime.use(backend=name), torch.no_grad():
            logits[name] = model(prompt).logits
            outputs[name] = model.generate(prompt, max_new_tokens=24)  # fla: CUDA graph by default
    assert rel_err(logits["fla"], logits["torch"]) < 1e-3
    assert torch.equal(outputs["fla"], outputs["torch"])


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_cuda_graph_generation_equals_eager(family, expanded):
    model = small_model(family, expanded)
    prompt = torch.randint(0, 300, (2, 50), generator=torch.Generator().manual_seed(2)).cuda()
    eager = model.generate(prompt, max_new_tokens=24, cuda_graph=False)
    graphed = model.generate(prompt, max_new_tokens=24, cuda_graph=True)
    default = model.generate(prompt, max_new_tokens=24)  # graphed by default on CUDA with fla
    assert torch.equal(graphed, eager)
    assert torch.equal(default, eager)


@pytest.mark.parametrize("kernel", ["triton", "fla"])
def test_each_ssd_kernel_generates_as_the_torch_path(kernel):
    with runtime.use(ssd_kernel=kernel):
        for expanded in (False, True):
            _generation_matches_torch_path(small_model("mamba2", expanded))



@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_carried_state_fast_path_matches_torch(family, expanded):
    """A training forward from a detached carried state (state passing): logits, loss and every parameter's
    gradient on the fast path against the torch path, and the logits against one unbroken sequence."""
    model = small_model(family, expanded).train()
    ids = torch.randint(0, 300, (2, 517), generator=torch.Generator().manual_seed(3)).cuda()
    results = {}
    for name in ("fla", "torch"):
        with runtime.use(backend=name):  # "fla": a failing kernel raises instead of falling back
            model.zero_grad()
            with torch.no_grad():
                whole = model(ids).logits[:, 300:]
                carried = model(ids[:, :300], use_cache=True).state
            out = model(ids[:, 300:], state=carried, labels=ids[:, 300:])
            out.loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results[name] = (whole, out.logits.detach(), out.loss.detach(), grads)
    (whole, logits, loss, grads), (_, ref_logits, ref_loss, ref_grads) = results["fla"], results["torch"]
    assert rel_err(logits, whole) < 1e-3
    assert rel_err(logits, ref_logits) < 1e-3
    assert abs(float(loss - ref_loss)) < 1e-3 * float(ref_loss)
    assert rel_err(grads, ref_grads) < 5e-3


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_left_padded_batch_fast_path_equals_each_row_alone(family, expanded):
    """attention_mask through the fast kernels: a left-padded row's last logits and greedy continuation equal
    the same row run alone, unpadded (transformers' meaning of the mask)."""
    model = small_model(family, expanded)
    gen = torch.Generator().manual_seed(4)
    rows = [torch.randint(1, 300, (n,), generator=gen) for n in (100, 63)]
    ids = torch.zeros(2, 100, dtype=torch.long)
    mask = torch.zeros(2, 100, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 100 - len(row):], mask[i, 100 - len(row):] = row, 1
    ids, mask = ids.cuda(), mask.cuda()
    with runtime.use(backend="fla"), torch.no_grad():
        last = model(ids, attention_mask=mask).logits[:, -1]
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=16, stop_tokens=())[:, 100:]
        for i, row in enumerate(rows):
            alone = row[None].cuda()
            assert rel_err(last[i], model(alone).logits[0, -1]) < 1e-3
            assert torch.equal(batch[i], model.generate(alone, max_new_tokens=16, stop_tokens=())[0, len(row):])
