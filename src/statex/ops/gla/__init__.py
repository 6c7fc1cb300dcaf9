from statex.ops.gla.chunk import chunk_gla
from statex.ops.gla.naive import naive_recurrent_gla
from statex.ops.gla.recurrent import recurrent_gla_step
from statex.ops.gla.split import split_heads_gla, torch_gla_kernel, torch_gla_step_kernel

__all__ = ["chunk_gla", "naive_recurrent_gla", "recurrent_gla_step", "split_heads_gla", "torch_gla_kernel",
           "torch_gla_step_kernel"]
