from statex.ops.ssd.chunk import chunk_ssd
from statex.ops.ssd.naive import naive_recurrent_ssd
from statex.ops.ssd.recurrent import recurrent_ssd_step
from statex.ops.ssd.via_gla import ssd_as_gla

__all__ = ["chunk_ssd", "naive_recurrent_ssd", "recurrent_ssd_step", "ssd_as_gla"]
