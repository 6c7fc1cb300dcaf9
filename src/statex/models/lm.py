"""Causal language models over GLA or Mamba2 blocks, with the source libraries' parameter names.

    GLAForCausalLM:    model.embeddings -> model.layers[i] (attn_norm, attn, mlp_norm, mlp) -> model.norm -> lm_head
    Mamba2ForCausalLM: backbone.embedding -> backbone.layers[i] (norm, mixer) -> backbone.norm_f -> lm_head

``model(input_ids, state=..., use_cache=True)`` processes a sequence in pieces: the returned
``RecurrentState`` (one entry per layer, sized from that layer's own spec) continues where the piece ended.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from statex.config import ModelConfig
from statex.models.gla import GLABlock
from statex.models.layers import RMSNorm
from statex.models.mamba2 import Mamba2Block


@dataclass
class RecurrentState:
    """Per-layer recurrent and convolution states after the last processed token."""

    layers: list[Any]  # GLAState | Mamba2State per layer

    @property
    def batch_size(self) -> int:
        first = self.layers[0]
        return (first.recurrent if hasattr(first, "recurrent") else first.ssm).shape[0]

    def map(self, fn) -> "RecurrentState":
        """A state of the same structure with fn applied to every tensor."""

        def apply(x):
            if x is None:
                return None
            if isinstance(x, tuple):
                return tuple(apply(t) for t in x)
            return fn(x)

        return RecurrentState([type(s)(**{k: apply(v) for k, v in vars(s).items()}) for s in self.layers])

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state, in a fixed order (two states of one model line up)."""
        found: list[torch.Tensor] = []
        self.map(found.append)
        return found

    def select(self, index: torch.Tensor) -> "RecurrentState":
        """Keep the batch rows ``index`` (e.g. to drop finished sequences)."""
        return self.map(lambda x: x.index_select(0, index))


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, T, vocab] (or [B, 1, vocab] with last_logits_only)
    loss: torch.Tensor | None = None
    state: RecurrentState | None = None


def _left_padding_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
    """The mask as the blocks take it (None when nothing is padded). Only left padding can be honoured exactly by a
    recurrent model; right padding needs no mask (a causal model's real positions never see it)."""
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.to(torch.bool)
    if bool(mask.all()):
        return None
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        if bool((mask[:, :-1] < mask[:, 1:]).any()):
            raise ValueError("attention_mask: only left padding (0s before the tokens) or right padding is supported")
        return None  # right padding: the real positions never see it
    return mask


class CausalLM(nn.Module):
    """Shared forward, loss, state and generation logic; subclasses name the modules as their source library."""

    config: ModelConfig
    lm_head: nn.Linear

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        self.gradient_checkpointing = False

    # Subclasses provide these three views of their differently named modules.
    @property
    def embed_tokens(self) -> nn.Embedding:
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def final_norm(self) -> RMSNorm:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def empty_state(self, batch: int) -> RecurrentState:
        return RecurrentState([b.empty_state(batch, self.device, self.dtype) for b in self.blocks])

    def forward(
        self,
        input_ids: torch.Tensor,
        state: RecurrentState | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
        last_logits_only: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids [B, T]; labels [B, T] gives the shifted next-token loss (-100 = ignore). ``attention_mask``
        [B, T] (transformers' meaning: 1 a token, 0 padding) takes left padding: a padded position changes no
        state, so each row computes what it computes unpadded (its padded positions' logits mean nothing)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
        mask = _left_padding_mask(attention_mask, input_ids)
        x = self.embed_tokens(input_ids)
        layer_states = state.layers if state is not None else [None] * len(self.blocks)
        new_states = []
        for block, layer_state in zip(self.blocks, layer_states):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, layer_state = checkpoint(block, x, layer_state, mask, use_reentrant=False)
            else:
                x, layer_state = block(x, layer_state, mask)
            new_states.append(layer_state)
        x = self.final_norm(x)
        if last_logits_only:
            x = x[:, -1:]
        logits = self.lm_head(x.to(self.lm_head.weight.dtype))
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].flatten(0, 1)
            if shifted.dtype in (torch.float16, torch.bfloat16):
                shifted = shifted.float()
            loss = F.cross_entropy(shifted, labels[:, 1:].flatten(), ignore_index=-100)
        keep_state = use_cache or state is not None
        return CausalLMOutput(logits, loss, RecurrentState(new_states) if keep_state else None)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: RecurrentState | None = None,
                chunk_tokens: int = 4096, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, RecurrentState]:
        """Run a long prompt in pieces of ``chunk_tokens`` carrying the state; memory stays flat in length.
        ``attention_mask``: left padding (see ``forward``). Returns (logits of the last position [B, vocab], state)."""
        logits = None
        for start in range(0, input_ids.shape[1], chunk_tokens):
            piece = None if attention_mask is None else attention_mask[:, start:start + chunk_tokens]
            out = self(input_ids[:, start:start + chunk_tokens], state=state, use_cache=True,
                       last_logits_only=True, attention_mask=piece)
            logits, state = out.logits[:, -1], out.state
        if logits is None:
            raise ValueError("prefill needs at least one token")
        return logits, state

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int | None = None, **kwargs: Any) -> torch.Tensor:
        """Prompt plus up to ``max_new_tokens`` (default 32) new tokens, stopping at the config's EOS unless
        ``stop_tokens`` or ``eos_token_id`` say otherwise; see ``statex.models.generation.generate``.
        transformers' keywords work too: ``model.generate(**tokenizer(texts, return_tensors="pt", padding=True),
        do_sample=False, max_length=64)`` with the tokenizer padding on the left (``hf_generate_kwargs``)."""
        from statex.models.generation import generate, hf_generate_kwargs

        kwargs = hf_generate_kwargs(self.config, input_ids, {"max_new_tokens": max_new_tokens, **kwargs})
        return generate(self, input_ids, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "CausalLM":
        """transformers' name for ``statex.load_model(path, **kwargs)`` (``torch_dtype``, ``dtype``, ``device``,
        ``device_map``); called on GLAForCausalLM or Mamba2ForCausalLM, the checkpoint must hold that family."""
        from statex.io.loading import load_model

        model = load_model(path, **kwargs)
        if cls is not CausalLM and not isinstance(model, cls):
            from statex.errors import StatexError

            raise StatexError(f"{path}: holds a {model.config.family} model, not a {cls.__name__}")
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write the project format (config.json + model.safetensors) atomically."""
        from statex.io.own import save_model

        save_model(self, path)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def num_parameters(self) -> int:
        """Parameters counted once each (a tied lm_head is not counted twice)."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def init_weights(self) -> None:
        raise NotImplementedError


class GLAForCausalLM(CausalLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.model = nn.Module()
        self.model.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.model.layers = nn.ModuleList(
            GLABlock(config.d_model, spec, config.intermediate_size, config.norm_eps) for spec in config.layers
        )
        self.model.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.embeddings

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> RMSNorm:
        return self.model.norm

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.device.type == "meta":
            return
        std = self.config.initializer_range
        nn.init.normal_(self.model.embeddings.weight, std=std)
        for block in self.model.layers:
            block.init_weights(std)
        nn.init.ones_(self.model.norm.weight)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)


class Mamba2ForCausalLM(CausalLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.backbone = nn.Module()
        self.backbone.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.backbone.layers = nn.ModuleList(
            Mamba2Block(config.d_model, spec, config.norm_eps, config.residual_in_fp32) for spec in config.layers
        )
        self.backbone.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.backbone.embedding

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def final_norm(self) -> RMSNorm:
        return self.backbone.norm_f

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.device.type == "meta":
            return
        nn.init.normal_(self.backbone.embedding.weight, std=self.config.initializer_range)
        for block in self.backbone.layers:
            block.init_weights(self.config.initializer_range, self.config.n_layer)
        nn.init.ones_(self.backbone.norm_f.weight)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=self.config.initializer_range)


_FAMILIES = {"gla": GLAForCausalLM, "mamba2": Mamba2ForCausalLM}


def require_model_memory(config: ModelConfig, dtype: torch.dtype = torch.float32, device=None,
                         copies: int = 1) -> None:
    """Refuse, before allocating, a model whose weights (times ``copies``) cannot fit in memory."""
    from statex.resources import require_memory

    count = config.parameter_count()
    size = torch.empty((), dtype=dtype).element_size()
    target = torch.device(device) if device is not None else None
    require_memory(count * size * copies, f"a model of {count:,} parameters", target)


def build_model(config: ModelConfig, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, seed: int | None = None) -> CausalLM:
    """A freshly initialised model (on the meta device: shapes only, no memory)."""
    config.validate()
    if device is None or torch.device(device).type != "meta":
        require_model_memory(config, dtype or torch.float32, device)
    rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = _FAMILIES[config.family](config)
    if dtype is not None:
        model = model.to(dtype)
    return model

