"""fla's own GLAForCausalLM loads what `statex export --to fla` writes: its logits against statex's (the CPU torch
path and CUDA), two configs. Needs a CUDA GPU and flash-linear-attention (fla's model classes; fla-core's kernels
need Triton). Prints one JSON line per case; docs/interop.md holds the measured output.

    pip install flash-linear-attention==0.6.0 fla-core==0.6.0 einops
    python -m bench.fla_export_check
"""
import json
import tempfile

import torch

import statex
from statex.io.export import export_model

results = []
for case in ({"num_heads": 4, "use_short_conv": True, "tie_embeddings": False},
             {"num_heads": 2, "use_short_conv": False, "tie_embeddings": True}):
    root = tempfile.mkdtemp()
    model = statex.build_model(statex.gla_config(257, 64, 2, **case), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(f"{root}/statex")
    export_model(f"{root}/statex", f"{root}/fla", "fla")
    from fla.models import GLAForCausalLM
    fla_model, info = GLAForCausalLM.from_pretrained(f"{root}/fla", output_loading_info=True)
    fla_model = fla_model.float().cuda().eval()
    ids = torch.randint(0, 257, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = fla_model(ids.cuda()).logits.float().cpu()
        cpu = model.eval()(ids).logits
        gpu = statex.load_model(f"{root}/statex", device="cuda")(ids.cuda()).logits.float().cpu()
    results.append({"case": case, "loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
                    "max_abs_fla_vs_statex_cpu": (theirs - cpu).abs().max().item(),
                    "max_abs_fla_vs_statex_cuda": (theirs - gpu).abs().max().item(),
                    "logit_scale": cpu.abs().max().item(), "tf32": torch.backends.cuda.matmul.allow_tf32})
    print(json.dumps(results[-1]), flush=True)
