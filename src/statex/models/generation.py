"""Decoding: chunked prefill of the prompt, then one recurrent step per new token (optionally replayed from a
CUDA graph)."""
from __future__ import annotations

import inspect

from typing import TYPE_CHECKING, Iterable

import torch

from statex.errors import StatexError
from statex.runtime import dispatch
from statex.runtime.settings import current


class NonFiniteLogits(StatexError):
    """Generation met NaN or infinite logits: what it would return is not the model's answer."""

if TYPE_CHECKING:
    from statex.models.lm import CausalLM, RecurrentState


HF_IGNORED = {"use_cache": None, "output_attentions": False, "output_hidden_states": False,
              "return_dict_in_generate": False, "output_scores": False, "num_beams": 1, "num_return_sequences": 1}


def hf_generate_kwargs(config, input_ids: torch.Tensor, kwargs: dict) -> dict:
    """transformers' generate keywords as ``generate``'s: ``do_sample`` (False: greedy whatever the temperature;
    True: temperature default 1), ``eos_token_id`` (an id or a list: the stop tokens; by default the config's EOS),
    ``max_length`` (prompt plus new tokens; ``max_new_tokens`` wins), ``min_new_tokens``, ``repetition_penalty``,
    ``pad_token_id``, ``attention_mask``, ``token_type_ids`` (all zeros, dropped). Anything transformers would do
    differently (beams, several sequences per prompt, score outputs) raises one line."""
    kwargs = dict(kwargs)
    for name, default in HF_IGNORED.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if default is not None and value != default:
                raise ValueError(f"generate: {name}={value!r} is not supported (statex generates one sequence per "
                                 "prompt, greedy or sampled, and returns the token ids)")
    types = kwargs.pop("token_type_ids", None)
    if types is not None and bool(types.any()):
        raise ValueError("generate: token_type_ids must be all zeros (these models have one segment)")
    sample = kwargs.pop("do_sample", None)
    if sample is False:
        for name in ("temperature", "top_k", "top_p"):
            kwargs.pop(name, None)
    elif sample is True:
        kwargs.setdefault("temperature", 1.0)
        if not kwargs["temperature"] > 0:
            raise ValueError("generate: do_sample=True needs temperature > 0")
    eos = kwargs.pop("eos_token_id", None)
    if "stop_tokens" not in kwargs:
        eos = config.eos_token_id if eos is None else eos
        kwargs["stop_tokens"] = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    max_length = kwargs.pop("max_length", None)
    if kwargs.get("max_new_tokens") is None:
        kwargs["max_new_tokens"] = 32 if max_length is None else max_length - input_ids.shape[-1]
    known = set(inspect.signature(generate).parameters) - {"model", "input_ids"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"generate: unknown argument(s) {', '.join(unknown)} (accepted: {', '.join(sorted(known))}, "
                         "and transformers' do_sample, eos_token_id, max_length, token_type_ids)")
    return kwargs


def sample_next_token(
    logits: torch.Tensor,  # [B, vocab]
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy when temperature == 0; otherwise sample from softmax(logits / temperature) restricted to the
    top_k tokens and to the smallest set whose probability reaches top_p. Returns [B] token ids."""
    if not temperature >= 0:  # NaN too
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    # a row without a finite logit has no distribution to sample from; it draws uniformly here and ``generate``
    # reports it (torch.multinomial would fail on it with an opaque error)
    logits = torch.where(torch.isfinite(logits).any(-1, keepdim=True), logits.float(), torch.zeros_like(logits.float()))
    logits = torch.nan_to_num(logits, nan=float("-inf")) / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class StepRunner:
    """One decoding step, model(token, state) -> logits [B, vocab], on fixed buffers: the input token and every
    state tensor live in tensors allocated once and updated in place. That is what lets the step be captured in
    a CUDA graph and replayed with one launch (``graph=True``, CUDA only): one token costs a few dozen small
    kernels per layer, and launching them one by one from Python is what bounds decoding speed on a GPU
    (docs/benchmarks.md). With ``graph=False`` the same buffers run eagerly (the CPU tests check that path).
    The returned logits are overwritten by the next step."""

    @torch.no_grad()
    def __init__(self, model: "CausalLM", state: "RecurrentState", graph: bool = False, warmup: int = 2):
        batch = state.batch_size
        self.model = model
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=model.device)
        self.state = state.map(torch.clone)
        self.graph = None
        if graph:
            if self.token.device.type != "cuda":
                raise ValueError("cuda_graph decoding needs the model on a CUDA device")
            # Warm-up on a side stream (as torch requires before capture) on copies of the state: the first calls
            # compile and autotune the Triton kernels, which must not happen inside the capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    model(self.token, state=self.state.map(torch.clone), use_cache=True)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step()

    def _step(self) -> torch.Tensor:
        out = self.model(self.token, state=self.state, use_cache=True)
        for buffer, new in zip(self.state.tensors(), out.state.tensors()):
            buffer.copy_(new)
        return out.logits[:, -1]

    @torch.no_grad()
    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token [B] -> logits [B, vocab] of the step that consumes it; the state buffers advance by one."""
        self.token.copy_(token.view(-1, 1))
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits


GRAPH_MIN_TOKENS = 8  # capture costs about three eager steps; below this many new tokens it does not pay off


def graph_by_default(is_cuda: bool, max_new_tokens: int) -> bool:
    """What ``generate(cuda_graph=None)`` does: replay a CUDA graph for CUDA models on the fla backend (measured
    7-11x faster per token on an H200, docs/benchmarks.md) when at least GRAPH_MIN_TOKENS tokens are asked for."""
    return (is_cuda and max_new_tokens >= GRAPH_MIN_TOKENS and current().backend != "torch"
            and dispatch.fla_available())


@torch.no_grad()
def generate(
    model: "CausalLM",
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Iterable[int] | None = None,
    pad_token_id: int | None = None,
    prefill_chunk: int = 4096,
    cuda_graph: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """Returns [B, T + n] = prompt followed by the generated tokens (n <= max_new_tokens).

    ``cuda_graph=True`` (CUDA models) captures the decoding step once in a CUDA graph and replays it for every
    token (``StepRunner``); the tokens are the same as without it, and the state is held twice (the graph's
    buffers). ``None`` (default) decides by ``graph_by_default``; ``False`` always steps eagerly.

    ``attention_mask`` (1 a token, 0 padding) takes a batch of prompts padded on the left: each row generates what
    it would alone.

    ``min_new_tokens``: the stop tokens cannot be drawn before that many new tokens. ``repetition_penalty`` p
    (transformers' rule): the logit of every token already in the row (prompt included) is divided by p where
    positive and multiplied by p where negative.

    Generation ends for a row when it emits one of ``stop_tokens`` (the stop token is kept); later
    positions of finished rows are filled with ``pad_token_id`` (default: the row's stop token), and the
    loop ends when every row has finished.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    if max_new_tokens <= 0:
        return input_ids
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    stops = torch.tensor(sorted(set(stop_tokens or [])), dtype=torch.long, device=input_ids.device)

    if attention_mask is not None and not bool(attention_mask[:, -1].bool().all()):
        raise ValueError("generate: pad prompts on the left (every row's last position must be a token)")
    logits, state = model.prefill(input_ids, chunk_tokens=prefill_chunk, attention_mask=attention_mask)
    if cuda_graph is None:
        cuda_graph = graph_by_default(input_ids.is_cuda, max_new_tokens)
    runner = StepRunner(model, state, graph=True) if cuda_graph and max_new_tokens > 1 else None
    batch = input_ids.shape[0]
    # broken weights show in the prefill's logits already; those and the last step's are checked (one sync,
    # nothing added per decoded token)
    nonfinite = ~torch.isfinite(logits).all()
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    fill = torch.full((batch,), -1, dtype=torch.long, device=input_ids.device)
    new_tokens = []
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(batch, logits.shape[-1], dtype=torch.bool, device=logits.device)
        seen.scatter_(1, input_ids.clamp(0, logits.shape[-1] - 1), True)
    for step in range(max_new_tokens):
        if seen is not None:
            scaled = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
            logits = torch.where(seen, scaled, logits)
        if step < min_new_tokens and stops.numel():
            logits = logits.index_fill(-1, stops, float("-inf"))
        token = sample_next_token(logits, temperature, top_k, top_p, generator)
        if seen is not None:
            seen.scatter_(1, token.clamp(min=0).unsqueeze(1), True)
        token = torch.where(finished, fill, token)
        new_tokens.append(token)
        if stops.numel():
            just_stopped = ~finished & torch.isin(token, stops)
            fill = torch.where(just_stopped, token if pad_token_id is None else torch.full_like(token, pad_token_id),
                               fill)
            finished |= just_stopped
            if bool(finished.all()):
                break
        if step + 1 == max_new_tokens:
            break
        if runner is not None:
            logits = runner(token)
        else:
            out = model(token.unsqueeze(1), state=state, use_cache=True)
            logits, state = out.logits[:, -1], out.state
    model.train(was_training)
    if bool(nonfinite | ~torch.isfinite(logits).all()):
        raise NonFiniteLogits("the model produced NaN or infinite logits while generating: its weights (or the "
                              "input) are broken; the output would be meaningless")
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)
