"""The GPU runtime: which kernel runs each op (``dispatch``), the settings that choose (``settings``: one
``KernelSettings``, read once from the environment, settable in code), Triton autotuning on a cold cache
(``autotune``) and compiling a run's kernels in parallel before it needs them (``prewarm``).

``statex.ops`` holds the math and the kernels; this package decides which of them runs. ``dispatch``, ``settings``
and ``autotune`` sit below the models (the mixers call ``dispatch``); ``prewarm`` builds models to compile their
kernels, so it sits beside training and evaluation and is imported only by them and the CLI.
"""
from statex.runtime.settings import KernelSettings, configure, current, use

__all__ = ["KernelSettings", "configure", "current", "use"]
