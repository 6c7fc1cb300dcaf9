"""Mamba2 mixer and block with mamba_ssm's math and parameter names.

Mixer, with d_inner I = nheads * headdim, G groups, state size N:
    zxbcdt = in_proj(u)                              # [z (I) | x (I) | B (G*N) | C (G*N) | dt (nheads)]
    xBC = silu(conv1d(xBC))                          # depthwise causal conv over the x, B, C channels
    dt = clamp(softplus(dt + dt_bias), *dt_limit);  A = -exp(A_log)
    S_t = exp(dt_t A) S_{t-1} + dt_t x_t^T B_t;  y_t = S_t C_t^T + D x_t      # per head, B/C per group
    out = out_proj(rmsnorm_grouped(y * silu(z)))     # group size I / G
Block (pre-norm, no MLP): x + mixer(norm(x)), the residual stream kept in fp32 when residual_in_fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from statex.config import Mamba2Spec
from statex.models.layers import CausalConv1d, GroupedGatedRMSNorm, RMSNorm
from statex.runtime import dispatch


@dataclass
class Mamba2State:
    ssm: torch.Tensor  # [B, nheads, headdim, d_state], fp32
    conv: torch.Tensor  # [B, conv_dim, d_conv - 1]


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, spec: Mamba2Spec):
        super().__init__()
        self.spec = spec
        d_inner, heads = spec.d_inner, spec.nheads
        self.in_proj = nn.Linear(d_model, spec.in_proj_dim, bias=spec.bias)  # [z, x, B, C, dt]
        self.conv1d = CausalConv1d(spec.conv_dim, spec.d_conv, spec.conv_bias)  # over [x, B, C]
        self.dt_bias = nn.Parameter(torch.empty(heads))
        self.A_log = nn.Parameter(torch.empty(heads))
        self.D = nn.Parameter(torch.empty(heads))
        self.norm = GroupedGatedRMSNorm(d_inner, group_size=d_inner // spec.ngroups, eps=spec.norm_eps,
                                        norm_before_gate=False)
        self.out_proj = nn.Linear(d_inner, d_model, bias=spec.bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4,
                             a_range: tuple[float, float] = (1.0, 16.0)) -> None:
        """mamba_ssm's init: dt log-uniform in [dt_min, dt_max] stored through the inverse softplus,
        A uniform in a_range stored as log, D = 1."""
        if self.dt_bias.is_meta:
            return
        heads = self.spec.nheads
        dt = torch.exp(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.empty(heads).uniform_(*a_range).log())
        self.D.fill_(1.0)

    def empty_state(self, batch: int, device=None, dtype=None) -> Mamba2State:
        spec = self.spec
        ssm = torch.zeros(batch, spec.nheads, spec.headdim, spec.d_state, device=device,
                          dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        return Mamba2State(ssm, self.conv1d.empty_state(batch, device, dtype))

    def forward(
        self, u: torch.Tensor, state: Mamba2State | None = None, chunk_size: int | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Mamba2State]:
        """u: [B, T, d_model] -> (out [B, T, d_model], state after the last token). ``chunk_size``: the torch
        path's chunk (the GPU kernels choose their own); by default 32 for d_state below 64, else 64: the in-chunk
        decay matrices cost chunk_size per token and head, the carried states d_state x headdim per chunk, and
        a small state is cheap to carry (d_state 8, headdim 16 on one CPU thread: forward + backward 0.216 s at
        64, 0.151 s at 32)."""
        spec = self.spec
        if chunk_size is None:
            chunk_size = 32 if spec.d_state < 64 else 64
        batch, length, _ = u.shape
        d_inner, gn = spec.d_inner, spec.ngroups * spec.d_state
        z, xBC, dt = self.in_proj(u).split([d_inner, d_inner + 2 * gn, spec.nheads], dim=-1)
        if mask is not None:  # left padding: zeros into the convolution, and dt = 0 (no state update) below
            xBC = xBC * mask.to(xBC.dtype).unsqueeze(-1)
        xBC, conv_state = self.conv1d(xBC, state.conv if state is not None else None)
        x, B, C = xBC.split([d_inner, gn, gn], dim=-1)

        work = torch.float64 if u.dtype == torch.float64 else torch.float32
        dt = F.softplus(dt.to(work) + self.dt_bias.to(work))  # [B, T, nheads]
        if spec.dt_limit != (0.0, math.inf):
            dt = dt.clamp(*spec.dt_limit)
        if mask is not None:
            dt = dt * mask.to(dt.dtype).unsqueeze(-1)
        A = -torch.exp(self.A_log.to(work))

        x = x.view(batch, length, spec.nheads, spec.headdim)
        B = B.view(batch, length, spec.ngroups, spec.d_state)
        C = C.view(batch, length, spec.ngroups, spec.d_state)
        initial = state.ssm if state is not None else None
        # CUDA: statex's own Triton SSD (or fla's chunk_gla), fla's fused_recurrent_gla per step; else torch SSD
        if length == 1 and initial is not None:
            y, ssm = dispatch.ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], self.D, initial)
            y = y.unsqueeze(1)
        else:
            y, ssm = dispatch.ssd_chunk(x, dt, A, B, C, self.D, initial, chunk_size)

        y = self.norm(y.reshape(batch, length, d_inner).to(u.dtype), z)
        return self.out_proj(y), Mamba2State(ssm, conv_state)


class Mamba2Block(nn.Module):
    def __init__(self, d_model: int, spec: Mamba2Spec, norm_eps: float, residual_in_fp32: bool):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = Mamba2Mixer(d_model, spec)

    def empty_state(self, batch: int, device=None, dtype=None) -> Mamba2State:
        return self.mixer.empty_state(batch, device, dtype)

    def forward(self, x: torch.Tensor, state: Mamba2State | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Mamba2State]:
        residual = x.float() if self.residual_in_fp32 and x.dtype in (torch.float16, torch.bfloat16) else x
        mixed, state = self.mixer(self.norm(x), state, mask=mask)
        return residual + mixed.to(residual.dtype), state

    @torch.no_grad()
    def init_weights(self, std: float, n_layer: int) -> None:
        """mamba_ssm's init: Linear layers keep PyTorch's default with zero bias, out_proj rescaled by
        1/sqrt(n_layer) (prenorm residual rescaling), SSM parameters as in ``reset_ssm_parameters``."""
        mixer = self.mixer
        for linear in (mixer.in_proj, mixer.out_proj):
            linear.reset_parameters()
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
        mixer.out_proj.weight /= math.sqrt(n_layer)
        mixer.conv1d.reset_parameters()
        mixer.reset_ssm_parameters()
        nn.init.ones_(mixer.norm.weight)
        nn.init.ones_(self.norm.weight)
