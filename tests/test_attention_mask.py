"""transformers' attention_mask on statex models: a left-padded row computes what the unpadded row computes, in the
forward pass, in chunked prefill and in batched generation, for both families (float64 against each row alone)."""
import pytest
import torch

import statex


def _model(family):
    if family == "gla":
        config = statex.gla_config(61, 32, 2, num_heads=2, use_short_conv=True)
    else:
        config = statex.mamba2_config(61, 32, 2, d_state=8, headdim=8, ngroups=2)
    model = statex.build_model(config, seed=0).double().eval()
    with torch.no_grad():  # conv biases and non-trivial norms, so that a padded position would show if it leaked
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def _left_padded(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_left_padded_rows_equal_unpadded_rows(family):
    model = _model(family)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 61, (n,), generator=gen).tolist() for n in (37, 20, 5)]
    ids, mask = _left_padded(rows, pad=7)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        unmasked = model(ids).logits
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r]), use_cache=True)
            torch.testing.assert_close(out.logits[i, -len(r):], alone.logits[0], rtol=1e-10, atol=1e-10)
            for a, b in zip(out.state.select(torch.tensor([i])).tensors(), alone.state.tensors()):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert (unmasked[2, -5:] - out.logits[2, -5:]).abs().max() > 1e-3  # without the mask the padding leaks
        # chunked prefill (pieces of 8) and batched generation
        logits, _ = model.prefill(ids, chunk_tokens=8, attention_mask=mask)
        torch.testing.assert_close(logits, out.logits[:, -1], rtol=1e-10, atol=1e-10)
        batch = model.generate(ids, max_new_tokens=6, attention_mask=mask)
        for i, r in enumerate(rows):
            alone = model.generate(torch.tensor([r]), max_new_tokens=6)
            assert batch[i, ids.shape[1]:].tolist() == alone[0, len(r):].tolist()


def test_masks_that_cannot_be_honoured_are_refused():
    model = _model("gla")
    ids = torch.randint(1, 61, (2, 6))
    with pytest.raises(ValueError, match="only left padding"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]))
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(model(ids, attention_mask=right).logits[0, :4], model(ids).logits[0, :4])
    with pytest.raises(ValueError, match="pad prompts on the left"):
        model.generate(ids, max_new_tokens=2, attention_mask=right)
