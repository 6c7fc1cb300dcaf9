"""lm-evaluation-harness adapter (optional extra ``statex[eval]``): ``StatexLM``, registered as ``statex``.

    statex eval MODEL --lm-eval piqa,hellaswag --tokenizer PATH          # through statex's CLI
    statex-lm-eval run --model statex --model_args path=MODEL,tokenizer=PATH --tasks piqa   # lm_eval's CLI
    python -m statex.eval.lm_eval_adapter run --model statex ...                            # the same

lm_eval's own ``lm_eval`` console script only knows the models it imports itself, so ``--model statex`` works
through ``statex-lm-eval`` (lm_eval's CLI with this module imported first) or from Python after
``import statex.eval.lm_eval_adapter``. Nothing is downloaded by statex; tasks whose datasets live on the hub
need them in the local HF cache (or a task YAML that points at local files).
"""
from __future__ import annotations

from typing import Any

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the lm-eval adapter needs lm-evaluation-harness: pip install 'statex[eval]'") from exc

from statex.data import load_tokenizer
from statex.eval.common import token_logprobs


@register_model("statex")
class StatexLM(LM):
    def __init__(self, path: str | None = None, tokenizer: str = "bytes", batch_size: int | str = 1,
                 device: str = "cpu", prefill_chunk: int = 2048, model=None, **kwargs: Any):
        super().__init__()
        from statex import load_model

        self.model = model if model is not None else load_model(path).to(device)
        self.model.eval()
        self.tokenizer = tokenizer if not isinstance(tokenizer, str) else load_tokenizer(tokenizer)
        self._device = next(self.model.parameters()).device
        self.prefill_chunk = int(prefill_chunk)
        self.batch_size = 1 if batch_size == "auto" else int(batch_size)

    def _bos(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else []

    @torch.no_grad()
    def _continuation_logprob(self, context: str, continuation: str) -> tuple[float, bool]:
        context_ids = self.tokenizer.encode(context) or self._bos()
        cont_ids = self.tokenizer.encode(continuation)
        if not cont_ids:
            return 0.0, True
        ids = torch.tensor([context_ids + cont_ids], device=self._device)
        logits = self.model(ids).logits[0, len(context_ids) - 1:-1].float().log_softmax(-1)
        target = torch.tensor(cont_ids, device=self._device)
        logprob = float(logits.gather(-1, target[:, None]).sum())
        greedy = bool((logits.argmax(-1) == target).all())
        return logprob, greedy

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return [self._continuation_logprob(*request.args) for request in requests]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for request in requests:
            ids = self._bos() + self.tokenizer.encode(request.args[0])
            if len(ids) < 2:
                results.append(0.0)
                continue
            losses = token_logprobs(self.model, torch.tensor([ids], device=self._device), self.prefill_chunk)
            skip = len(self._bos())  # the artificial start token is context, not scored text
            results.append(-float(losses[0, max(0, skip - 1):].sum()))
        return results

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            ids = torch.tensor([self.tokenizer.encode(context) or self._bos()], device=self._device)
            stops = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
            generated = self.model.generate(ids, max_new_tokens=max_new, stop_tokens=stops,
                                            prefill_chunk=self.prefill_chunk)
            text = self.tokenizer.decode(generated[0, ids.shape[1]:].tolist())
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            outputs.append(text)
        return outputs


def run_lm_eval(model, model_name: str, tokenizer, tasks: list[str], limit: int | None = None,
                include_path: str | None = None):
    """Run lm-eval tasks on an in-memory statex model; returns statex Records."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from statex.eval.common import Record

    adapter = StatexLM(model=model, tokenizer=tokenizer)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    output = lm_eval.simple_evaluate(model=adapter, tasks=tasks, limit=limit, task_manager=manager,
                                     log_samples=False)
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


def main() -> None:
    """lm_eval's command line with the ``statex`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
