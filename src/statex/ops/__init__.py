"""Pure-torch kernels for the recurrent mixers.

Each op lives in its own folder with a ``naive.py`` per-token reference beside the fast chunked form:

- ``gla``: gated linear attention with a per-key-channel decay (fla's GLA).
- ``ssd``: Mamba2's state-space duality form, i.e. linear attention with one scalar decay per head.
"""
from statex.ops.gla import chunk_gla, naive_recurrent_gla, recurrent_gla_step
from statex.ops.ssd import chunk_ssd, naive_recurrent_ssd, recurrent_ssd_step

__all__ = [
    "chunk_gla",
    "naive_recurrent_gla",
    "recurrent_gla_step",
    "chunk_ssd",
    "naive_recurrent_ssd",
    "recurrent_ssd_step",
]
