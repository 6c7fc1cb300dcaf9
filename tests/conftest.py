import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

import statex  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_gla_config(**overrides):
    kwargs = dict(vocab_size=61, d_model=32, n_layer=2, num_heads=2, use_short_conv=True)
    kwargs.update(overrides)
    return statex.gla_config(**kwargs)


def tiny_mamba2_config(**overrides):
    kwargs = dict(vocab_size=61, d_model=32, n_layer=2, d_state=8, headdim=8, ngroups=2)
    kwargs.update(overrides)
    return statex.mamba2_config(**kwargs)


def randomize_(model, scale=0.2):
    """Perturb the parameters that fresh init sets to constants (norms, D) so that tests see them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or "g_norm" in name \
                    or name.endswith(".D") or name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * scale)
    return model


@pytest.fixture(params=["gla", "mamba2"])
def tiny_model(request):
    config = tiny_gla_config() if request.param == "gla" else tiny_mamba2_config()
    return randomize_(statex.build_model(config, dtype=torch.float64)).eval()
