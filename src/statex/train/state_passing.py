"""State passing: a micro-batch starts, with probability p, from the detached final recurrent state of the micro-batch
before it, instead of from zero.

The StateX reference training offers it for GLA (p = 0.9). A model trained only from zero states sees, at every
position t, a state built from at most t tokens; one trained with carried states also learns to read and overwrite
a state already full of earlier sequences, which is what it meets past its training length. No gradient flows into
the carried state (it is detached), so a step costs what it cost before.

The draw of each micro-batch is seeded by (seed, data position, micro-batch index), so every process of a run
makes the same draw and a resumed run the same draws as an uninterrupted one; the carried state itself is saved
in the checkpoint (the first process's: a resumed run of one process continues exactly, one of several restores
that state on every process).
"""
from __future__ import annotations

from typing import Any

import torch


class StatePassing:
    def __init__(self, probability: float, seed: int):
        self.probability, self.seed = probability, seed
        self.carried = None  # RecurrentState of the last micro-batch, detached

    @property
    def enabled(self) -> bool:
        return self.probability > 0

    def draw(self, position: int, micro: int) -> bool:
        """Whether the micro-batch ``micro`` of the step at data position ``position`` starts from the carried
        state (when there is one)."""
        if self.probability >= 1:
            return True
        gen = torch.Generator().manual_seed((self.seed * 7_919 + position * 131 + micro + 17) % (2**63))
        return bool(torch.rand((), generator=gen, dtype=torch.float64) < self.probability)

    def initial(self, position: int, micro: int, batch_size: int):
        """The state the micro-batch starts from: the carried one, or None (zeros)."""
        if not self.enabled or self.carried is None or self.carried.batch_size != batch_size:
            return None
        return self.carried if self.draw(position, micro) else None

    def keep(self, state) -> None:
        if self.enabled and state is not None:
            self.carried = state.map(torch.Tensor.detach)

    def state_dict(self) -> list[torch.Tensor] | None:
        return None if self.carried is None else [t.cpu() for t in self.carried.tensors()]

    def load(self, tensors: Any, model, device) -> None:
        """Restore a carried state saved by ``state_dict`` (its structure from the model's empty state)."""
        if not self.enabled or not tensors:
            self.carried = None
            return
        template = model.empty_state(int(tensors[0].shape[0]))
        found = iter(tensors)
        self.carried = template.map(lambda _: next(found).to(device))
