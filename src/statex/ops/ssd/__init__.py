from statex.ops.ssd.chunk import chunk_ssd
from statex.ops.ssd.naive import naive_recurrent_ssd
from statex.ops.ssd.recurrent import recurrent_ssd_step

__all__ = ["chunk_ssd", "naive_recurrent_ssd", "recurrent_ssd_step"]
