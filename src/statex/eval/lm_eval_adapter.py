"""lm-evaluation-harness adapter (optional extra ``statex[eval]``): ``StatexLM``, registered as ``statex``.

    statex eval MODEL --lm-eval piqa,hellaswag                                  # through statex's CLI
    statex-lm-eval run --model statex --model_args pretrained=MODEL --tasks piqa  # lm_eval's CLI
    python -m statex.eval.lm_eval_adapter run --model statex ...                  # the same

It computes what lm-eval's own Hugging Face backend (``--model hf``) computes from the same weights: it is built on
lm-eval's ``TemplateLM``, so a context and its continuation are split by lm-eval's own code (a context's trailing
whitespace moves into the continuation), and it follows that backend's rules for the rest: text is encoded with
the tokenizer's special tokens (a BOS where the tokenizer adds one) unless it already starts with the BOS; an empty
context and every rolling window start from the prefix token (BOS, else EOS); inputs longer than ``max_length``
(default 2048, that backend's default for models whose config names no length) lose their oldest tokens; rolling
loglikelihoods use lm-eval's disjoint windows; generation stops at any ``until`` string or the EOS. Batches are
right-padded, which changes nothing in a causal model's scores.

model_args: ``pretrained`` (or ``path``; a statex, fla-hub or transformers model directory), ``tokenizer`` (default
the model directory's tokenizer.json, else the byte tokenizer), ``batch_size``, ``device`` (default CUDA when
available, else the CPU, also when CUDA is asked for but absent, as that backend does), ``dtype`` (float32, bfloat16, float16 or auto: the weights as stored), ``max_length``,
``add_bos_token``, ``prefix_token_id``, ``prefill_chunk``. Any other argument is refused. lm_eval's own
``lm_eval`` console script only knows the models it imports itself, so ``--model statex`` works through
``statex-lm-eval`` or from Python after ``import statex.eval.lm_eval_adapter``. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

try:
    import lm_eval.models  # noqa: F401  (lm-eval fills its registry lazily, only while it is empty: first its own)
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the lm-eval adapter needs lm-evaluation-harness: pip install 'statex[eval]'") from exc

from statex.data import load_tokenizer
from statex.errors import StatexError

DEFAULT_MAX_LENGTH = 2048  # lm-eval's HF backend's, for configs that name no maximum length
ACCEPTED = ("pretrained", "path", "tokenizer", "batch_size", "max_batch_size", "device", "dtype", "max_length",
            "add_bos_token", "prefix_token_id", "prefill_chunk", "model", "trust_remote_code")


@register_model("statex")
class StatexLM(TemplateLM):
    def __init__(self, pretrained: str | None = None, path: str | None = None, tokenizer: Any = None,
                 batch_size: int | str = 1, max_batch_size: int | None = None, device: str | None = None,
                 dtype: str | None = None, max_length: int | None = None, add_bos_token: bool | None = None,
                 prefix_token_id: int | None = None, prefill_chunk: int = 2048, model=None, **unknown: Any):
        super().__init__()
        unknown.pop("trust_remote_code", None)  # lm-eval passes it to every model; statex runs no remote code
        if unknown:
            raise StatexError(f"lm-eval model_args: unknown argument(s) {', '.join(sorted(unknown))} for the statex "
                              f"model (accepted: {', '.join(a for a in ACCEPTED if a != 'model')})")
        source = pretrained or path
        if model is None and source is None:
            raise StatexError("lm-eval model_args: give pretrained=MODEL_DIRECTORY")
        if device in (None, "", "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line asks for cuda:0 unless told otherwise; its HF backend then runs on the CPU
            import warnings

            warnings.warn(f"lm-eval device {device}: no CUDA device is available; running on the CPU", stacklevel=2)
            device = "cpu"
        if model is None:
            from statex.io import load_model

            model = load_model(source, dtype=dtype or torch.float32)  # "auto": as stored
        elif dtype not in (None, "auto"):
            from statex.io.loading import resolve_placement

            model = model.to(resolve_placement(dtype, "cpu")[0])
        self.model = model.to(device).eval()
        self._device = torch.device(device)
        if tokenizer is None:
            own = Path(source) / "tokenizer.json" if source is not None else None
            tokenizer = str(own) if own is not None and own.is_file() else "bytes"
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        if batch_size == "auto" or str(batch_size).startswith("auto"):
            batch_size = max_batch_size or 1
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise StatexError(f"lm-eval batch_size must be >= 1, got {batch_size}")
        self._max_length = int(max_length) if max_length else DEFAULT_MAX_LENGTH
        self.add_bos_token = add_bos_token if not isinstance(add_bos_token, str) else add_bos_token == "True"
        self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
        self.prefill_chunk = int(prefill_chunk)
        if self.prefix_token_id is None:
            raise StatexError(f"tokenizer {getattr(self.tokenizer, 'name', tokenizer)} has neither a BOS nor an EOS "
                              "token to start contexts with: pass prefix_token_id=ID")

    # ---- lm-eval's interface -----------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int | None:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        if special is None:  # the tokenizer's own default: its special tokens, unless the text starts with BOS
            special = not self._starts_with_bos(string)
        ids = self.tokenizer.encode(string, add_special_tokens=bool(special))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    def _starts_with_bos(self, string: str) -> bool:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos is not None and bool(string) and string.startswith(self.tokenizer.decode([bos]))

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """[(cache key, context ids, continuation ids)] -> [(sum of the continuation's log-probabilities, whether
        greedy decoding reproduces it)]. Each input is the last max_length tokens of context + continuation
        less its final token; batches are right-padded."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            inputs = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):][:-1] for i in chunk]
            width = max(len(x) for x in inputs)
            batch = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, ids in enumerate(inputs):
                batch[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs = self.model(batch.to(self._device)).logits.float().log_softmax(-1)
            for row, i in enumerate(chunk):
                continuation = requests[i][2]
                end = len(inputs[row])
                picked = logprobs[row, end - len(continuation):end]
                target = torch.tensor(continuation, device=picked.device)
                result = (float(picked.gather(-1, target[:, None]).sum()),
                          bool((picked.argmax(-1) == target).all()))
                results[i] = result
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], result)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The whole text's log-likelihood over lm-eval's disjoint windows of max_length tokens, each starting
        from the prefix token (or the window before it)."""
        totals = []
        for request in requests:
            (string,) = request.args
            windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, context, target) for context, target in windows])
            total = sum(score for score, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            totals.append(total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations (with do_sample: sampled at temperature / top_k / top_p by the model's own
        sampler), one request at a time, stopped at the first ``until`` string or the EOS and cut there; the context keeps its last
        max_length - max_gen_toks tokens."""
        outputs = []
        eos = self.tok_decode([self.eot_token_id]) if self.eot_token_id is not None else None
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if eos and eos not in until:
                until.append(eos)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 1.0 if sample else 0.0))
            top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
            kwargs.pop("max_length", None)
            if kwargs:
                raise StatexError(f"lm-eval generation_kwargs: unsupported {', '.join(sorted(kwargs))}")
            budget = self.max_length - max_new
            if budget < 1:
                raise StatexError(f"lm-eval: max_gen_toks {max_new} leaves no room for the context in max_length "
                                  f"{self.max_length}")
            ids = self.tok_encode(context, left_truncate_len=budget) or [self.prefix_token_id]
            prompt = torch.tensor([ids], device=self._device)
            stops = [self.eot_token_id] if self.eot_token_id is not None else []
            generated = self.model.generate(prompt, max_new_tokens=max_new, stop_tokens=stops,
                                            temperature=temperature if sample else 0.0,
                                            top_k=top_k if sample else None, top_p=top_p if sample else None,
                                            prefill_chunk=self.prefill_chunk)
            new = generated[0, len(ids):].tolist()
            if self.eot_token_id is not None and self.eot_token_id in new:
                new = new[:new.index(self.eot_token_id)]
            text = self.tok_decode(new)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs


def run_lm_eval(model, model_name: str, tokenizer, tasks: list[str], limit: int | None = None,
                include_path: str | None = None, batch_size: int = 1, samples: dict | None = None):
    """Run lm-eval tasks on an in-memory statex model; returns statex Records. ``samples``: a dict that receives
    lm-eval's per-item records, task -> list (``write_samples`` writes them)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from statex.eval.common import Record

    adapter = StatexLM(model=model, tokenizer=tokenizer, batch_size=batch_size,
                       device=str(next(model.parameters()).device))
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    output = lm_eval.simple_evaluate(model=adapter, tasks=tasks, limit=limit, task_manager=manager,
                                     log_samples=samples is not None)
    if samples is not None:
        samples.update(output.get("samples", {}))
    records = []
    for task, metrics in output["results"].items():
        n = int(output.get("n-samples", {}).get(task, {}).get("effective", 0))
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr") or not isinstance(value, (int, float)) or metric in ("alias", "sample_len"):
                continue
            records.append(Record(model_name, f"lm-eval:{task}", "zero-shot" if filt in ("none", "") else filt,
                                  metric, float(value), n))
    return records


def write_samples(samples: dict[str, list], out: Path, model_name: str) -> None:
    """lm-eval's per-item records as OUT/<model>_<task>.jsonl (strict JSON, written whole)."""
    from statex.files import safe_file_name, write_atomic
    from statex.strict_json import dumps_strict

    out.mkdir(parents=True, exist_ok=True)
    safe = safe_file_name(model_name)
    for task, items in samples.items():
        lines = "".join(dumps_strict(item, default=str) + "\n" for item in items)
        write_atomic(out / f"{safe}_{task}.jsonl", lines)


def main() -> None:
    """lm_eval's command line with the ``statex`` model registered; a statex error is one line and exit 2."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except StatexError as exc:
        print(f"statex-lm-eval: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
