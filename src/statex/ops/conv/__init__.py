"""Mamba2's depthwise causal convolution with SiLU as a Triton kernel (``triton_conv``); the pure-torch version is
``statex.models.layers.CausalConv1d``, which dispatches here through ``statex.runtime.dispatch.conv_silu``."""
