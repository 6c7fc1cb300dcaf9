from statex.ops.gla.chunk import chunk_gla
from statex.ops.gla.naive import naive_recurrent_gla
from statex.ops.gla.recurrent import recurrent_gla_step

__all__ = ["chunk_gla", "naive_recurrent_gla", "recurrent_gla_step"]
