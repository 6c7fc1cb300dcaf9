"""Chunked parallel form of GLA (per-key-channel decay), pure torch.

The sequence is cut into chunks of ``chunk_size`` tokens (default 32, sub-chunks of 8: the fastest on CPU
from tiny to GLA-1.3B head sizes in bench measurements). Across chunks the state is carried by
``scan_chunk_states`` (one [K, V] state per chunk is kept, so memory is linear in T). Inside a chunk the
output is ``o_t = q_t S_in decayed + sum_{s<=t in chunk} (sum_k q_tk k_sk exp(b_tk - b_sk)) v_s`` where b is
the in-chunk cumulative log decay.

Numerical stability. When a chunk's total log decay is moderate (at most FACTOR_LIMIT, the usual case: fla's
gate is logsigmoid / 16), the in-chunk decay factors through the mid-chunk value r,
exp(b_t - b_s) = exp(b_t - r) exp(r - b_s), and the scores are one [C, K] x [K, C] matmul per chunk.
Otherwise (strong decay), every exponent that is evaluated is <= 0, whatever the decay strength:
- Inter-chunk terms use exp(b_t) and exp(b_last - b_s), both <= 1.
- In-chunk terms are split into sub-chunks of ``sub_chunk`` tokens. For a query sub-chunk i and an earlier
  key sub-chunk j, the decay is factored through the first position p_i of sub-chunk i:
  exp(b_t - b_s) = exp(b_t - b_{p_i}) * exp(b_{p_i} - b_s) with both factors <= 1 (fla's secondary chunking).
- Diagonal sub-chunks form exp(b_t - b_s) for s <= t directly ([sub_chunk, sub_chunk, K] per sub-chunk).
Nothing of size [T, T] exists: the largest tensors are [..., chunk/sub_chunk, chunk, K] per chunk.
All arithmetic runs in fp32 (fp64 if the inputs are fp64) and the output is cast back to v's dtype.
"""
from __future__ import annotations

import torch

from statex.ops.chunking import compute_dtype, pad_time, scan_chunk_states


# Largest total in-chunk log decay served by the factored in-chunk form, per compute dtype: its factors stay
# within exp(+-limit) (about 2e17 for fp32), far inside the normal range of the dtype.
FACTOR_LIMIT = {torch.float32: 40.0, torch.float64: 400.0}


def chunk_gla(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    g: torch.Tensor,  # [B, T, H, K] log decay, <= 0
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
    chunk_size: int = 32,
    sub_chunk: int = 8,
    factor_limit: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (o [B, T, H, V], final state [B, H, K, V] in the compute dtype).

    factor_limit: the largest total in-chunk log decay for which the in-chunk scores use the factored form
    (default: FACTOR_LIMIT of the compute dtype; 0 forces the sub-chunk form everywhere)."""
    if chunk_size % sub_chunk != 0:
        raise ValueError(f"chunk_size {chunk_size} must be a multiple of sub_chunk {sub_chunk}")
    batch, length, heads, key_dim = q.shape
    value_dim, out_dtype = v.shape[-1], v.dtype
    scale = key_dim**-0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, g)
    chunk_size = min(chunk_size, max(sub_chunk, -(-length // sub_chunk) * sub_chunk))

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, D] -> [B, H, N, C, D]
        x = pad_time(x.to(dtype), chunk_size)
        return x.view(batch, -1, chunk_size, heads, x.shape[-1]).permute(0, 3, 1, 2, 4)

    q, k, v, g = (to_chunks(x) for x in (q, k, v, g))
    q = q * scale
    b = g.cumsum(dim=-2)  # in-chunk cumulative log decay, [B, H, N, C, K]
    b_last = b[..., -1:, :]  # [B, H, N, 1, K]

    # Inter-chunk: state entering each chunk, then its contribution to every query of the chunk.
    k_to_end = k * (b_last - b).exp()
    chunk_update = k_to_end.transpose(-1, -2) @ v  # [B, H, N, K, V]
    chunk_decay = b_last.squeeze(-2).exp().unsqueeze(-1)  # [B, H, N, K, 1]
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    states_in, final_state = scan_chunk_states(chunk_decay, chunk_update, initial_state)
    o = (q * b.exp()) @ states_in  # [B, H, N, C, V]

    limit = FACTOR_LIMIT[dtype] if factor_limit is None else factor_limit
    if float(-b_last.detach().min()) <= limit:
        scores = _factored_scores(q, k, b)
    else:
        scores = _sub_chunk_scores(q, k, b, sub_chunk)
    o = o + scores @ v
    o = o.permute(0, 2, 3, 1, 4).reshape(batch, -1, heads, value_dim)[:, :length]
    return o.to(out_dtype), final_state


def _factored_scores(q: torch.Tensor, k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Causal in-chunk scores [B, H, N, C, C] for moderate decay: exp(b_t - b_s) = exp(b_t - r) exp(r - b_s)
    around the mid-chunk value r. Each factor lies within exp(+-limit) and every product kept (s <= t) is <= 1,
    so nothing overflows or loses precision; the entries above the diagonal are finite and are zeroed."""
    chunk_size = b.shape[-2]
    r = b[..., chunk_size // 2:chunk_size // 2 + 1, :]
    scores = (q * (b - r).exp()) @ (k * (r - b).exp()).transpose(-1, -2)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, 0.0)


def _sub_chunk_scores(q: torch.Tensor, k: torch.Tensor, b: torch.Tensor, sub_chunk: int) -> torch.Tensor:
    """Causal in-chunk scores [B, H, N, C, C] for any decay strength, assembled from sub-chunk blocks with
    every evaluated exponent <= 0 (module docstring)."""
    chunk_size, key_dim, dtype = b.shape[-2], b.shape[-1], b.dtype
    n_sub = chunk_size // sub_chunk
    sub_shape = (*b.shape[:3], n_sub, sub_chunk, key_dim)
    q_s, k_s, b_s = q.reshape(sub_shape), k.reshape(sub_shape), b.reshape(sub_shape)
    b_ref = b_s[..., :, :1, :]  # first position of each query sub-chunk, [B, H, N, S, 1, K]

    # Off-diagonal blocks (key sub-chunk j strictly before query sub-chunk i).
    q_rel = q_s * (b_s - b_ref).exp()  # [B, H, N, S, c, K]
    exponent = b_ref.unsqueeze(-3) - b_s.unsqueeze(-4)  # [B, H, N, S(i), S(j), c, K]
    earlier = torch.ones(n_sub, n_sub, dtype=torch.bool, device=q.device).tril(-1)
    exponent = exponent.masked_fill(~earlier[:, :, None, None], float("-inf"))
    k_rel = k_s.unsqueeze(-4) * exponent.exp()
    scores = torch.einsum("...itk,...ijsk->...ijts", q_rel, k_rel)  # [B, H, N, S, S, c, c]

    # Diagonal blocks, exact: exp(b_t - b_s) for s <= t within the sub-chunk.
    causal = torch.ones(sub_chunk, sub_chunk, dtype=torch.bool, device=q.device).tril()
    exponent = b_s.unsqueeze(-2) - b_s.unsqueeze(-3)  # [B, H, N, S, c(t), c(s), K]
    exponent = exponent.masked_fill(~causal[:, :, None], float("-inf"))
    # elementwise then a sum: einsum would turn this into a batch of 1x1 matmuls, which is far slower on CPU
    diag = (q_s.unsqueeze(-2) * exponent.exp() * k_s.unsqueeze(-3)).sum(-1)  # [B, H, N, S, c, c]
    eye = torch.eye(n_sub, dtype=dtype, device=q.device)[:, :, None, None]
    scores = scores + eye * diag.unsqueeze(-3)

    return scores.transpose(-3, -2).reshape(*b.shape[:3], chunk_size, chunk_size)
