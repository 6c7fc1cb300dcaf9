"""Small building blocks shared by both model families: RMS norms and the causal depthwise convolution."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from statex.runtime import dispatch


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, computed in fp32, returned in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float() if x.dtype != torch.float64 else x
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(y.dtype)).to(self.weight.dtype)


class GroupedGatedRMSNorm(nn.Module):
    """RMSNorm over groups of ``group_size`` channels combined with a SiLU gate.

    - ``norm_before_gate=True`` (fla GLA ``g_norm_swish_gate``): norm(x) * weight * silu(gate); the weight has
      ``group_size`` entries shared by every group (fla: one weight of size head_v_dim for all heads).
    - ``norm_before_gate=False`` (mamba_ssm ``RMSNormGated``): norm(x * silu(gate)) * weight; the weight spans
      all channels.
    """

    def __init__(self, weight_dim: int, group_size: int, eps: float, norm_before_gate: bool):
        super().__init__()
        self.group_size = group_size
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(weight_dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return dispatch.gated_rms_norm(x, gate, self.weight, self.eps, self.group_size, self.norm_before_gate,
                                       lambda: self.reference(x, gate))

    def reference(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The pure-torch computation (CPU, fp64, and the reference for the fused CUDA kernels)."""
        out_dtype = x.dtype
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, gate = x.to(work), gate.to(work)
        if not self.norm_before_gate:
            x = x * F.silu(gate)
        shape = x.shape
        grouped = x.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight.to(work)
        if weight.shape[0] == self.group_size:
            y = (grouped * weight).reshape(shape)
        else:
            y = grouped.reshape(shape) * weight
        if self.norm_before_gate:
            y = y * F.silu(gate)
        return y.to(out_dtype)


class CausalConv1d(nn.Module):
    """Depthwise causal convolution with SiLU, carrying the last ``kernel_size - 1`` inputs as its state.

    Parameters are named like ``nn.Conv1d`` (``weight`` [channels, 1, kernel_size], ``bias`` [channels]) so that
    fla ``ShortConvolution`` and mamba_ssm ``conv1d`` weights load one to one.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default: kaiming_uniform(a=sqrt(5)) on the weight, uniform(+-1/sqrt(fan_in)) on the bias.
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            bound = 1 / self.kernel_size**0.5
            nn.init.uniform_(self.bias, -bound, bound)

    def empty_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch, self.channels, self.kernel_size - 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, T, channels]; state: [B, channels, kernel_size - 1] or None (zeros)."""
        keep, length = self.kernel_size - 1, x.shape[1]
        if state is None:
            # a copy, not a view: a view would keep all of x alive as long as the state is kept (a whole prefill
            # chunk per layer while decoding), and FSDP2 warns about views among a block's outputs
            new_state = F.pad(x[:, max(0, length - keep):], (0, 0, max(0, keep - length), 0)).transpose(1, 2)
            y = dispatch.conv_silu(x, self.weight[:, 0, :], self.bias,
                                   lambda: self._torch_path(F.pad(x, (0, 0, keep, 0)), length))
            return y, new_state.clone(memory_format=torch.contiguous_format)
        padded = torch.cat([state.to(x.dtype).transpose(1, 2), x], dim=1)  # [B, keep + T, channels]
        new_state = padded[:, padded.shape[1] - keep:].transpose(1, 2).clone(memory_format=torch.contiguous_format)
        return self._torch_path(padded, length), new_state

    def _torch_path(self, padded: torch.Tensor, length: int) -> torch.Tensor:
        y = _ShiftedDepthwiseConv.apply(padded, self.weight.to(padded.dtype)[:, 0, :], length)
        if self.bias is not None:
            y = y + self.bias.to(padded.dtype)
        return F.silu(y)


class _ShiftedDepthwiseConv(torch.autograd.Function):
    """y[:, t] = sum_k padded[:, t + k] * weight[:, k] in the [B, T, channels] layout.

    On CPU this beats a grouped conv1d (no transposes, contiguous elementwise kernels), and the hand-written
    backward accumulates into one gradient buffer instead of one zero-filled buffer per shifted slice.
    """

    @staticmethod
    def forward(ctx, padded: torch.Tensor, weight: torch.Tensor, length: int) -> torch.Tensor:
        ctx.save_for_backward(padded, weight)
        y = padded[:, :length] * weight[:, 0]
        for k in range(1, weight.shape[1]):
            y.addcmul_(padded[:, k:k + length], weight[:, k])
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        padded, weight = ctx.saved_tensors
        length = grad_y.shape[1]
        grad_padded = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for k in range(weight.shape[1]):
                grad_padded[:, k:k + length].addcmul_(grad_y, weight[:, k])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.stack(
                [(grad_y * padded[:, k:k + length]).sum(dim=(0, 1)) for k in range(weight.shape[1])], dim=1
            )
        return grad_padded, grad_weight, None
