"""The training loss over a batch whose sequences carry loss weights (their sources' ``loss_weight``).

With l_it the next-token loss of sequence i at labelled position t, n_i its labelled positions and w_i its weight:

    tokens:     sum_i w_i sum_t l_it / sum_i w_i n_i     (the weighted mean over labelled tokens)
    sequences:  sum_i w_i (sum_t l_it / n_i) / sum_i w_i  (over the sequences with labels)

With every w_i = 1 these are the plain token mean and the mean of per-sequence means. ``sequences`` makes every
sequence count alike however many of its tokens are labelled; the weights instead set how much each source's
labelled tokens count (an MQAR sequence labels only its answers, a text sequence every token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                  average: str) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] (``labels[:, t]`` predicted from position t - 1; -100 ignored), weights [B]
    (None: every weight 1)."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    counts = (targets != IGNORE).sum(1)
    if weights is None:
        weights = torch.ones(len(counts), device=counts.device)
    if average == "tokens":
        return (losses.sum(1) * weights).sum() / (counts * weights).sum().clamp(min=1e-12)
    per_sequence = losses.sum(1) / counts.clamp(min=1)
    kept = counts > 0
    if bool((weights == 1).all()):
        return per_sequence[kept].mean()
    return (per_sequence * weights)[kept].sum() / weights[kept].sum().clamp(min=1e-12)
