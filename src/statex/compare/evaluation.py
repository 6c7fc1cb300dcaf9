"""One model's evaluation in a comparison: every task of the spec's ``eval`` at the family's lengths, the same
sequences for every model (one evaluation seed), as records with family, variant and seed; and the checks of
those requests, made when the plan is built."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statex.data.tokenizers import is_builtin
from statex.errors import StatexError
from statex.eval.config import TaskOptions

if TYPE_CHECKING:
    from statex.compare.plan import Plan, Stage
    from statex.compare.spec import EvalSpec

GRID_TASKS = ("mqar", "passkey", "niah")


def task_requests(ev: EvalSpec, lengths: dict[str, list[int]], heldout: str | None,
                  haystack: str | None) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """task -> (statex.eval task names, keyword arguments of ``statex.eval.evaluate``)."""
    common = dict(seed=ev.seed, batch_size=ev.batch_size, prefill_chunk=ev.prefill_chunk)
    requests = {}
    if ev.mqar is not None:
        requests["mqar"] = (["mqar"], {**common, "n": ev.mqar.n, "batch_size": ev.mqar.batch_size,
                                       "mqar_lengths": lengths["mqar"], "pairs": list(ev.mqar.pairs),
                                       "mqar_keys": ev.mqar.keys})
    if ev.mqar_layers is not None:  # on the key range the models were evaluated on unless it names its own
        keys = ev.mqar_layers.keys if ev.mqar_layers.keys is not None else ev.mqar.keys if ev.mqar else None
        requests["mqar_layers"] = (["mqar_layers"], {**common, "n": ev.mqar_layers.n,
                                                     "batch_size": ev.mqar_layers.batch_size,
                                                     "mqar_lengths": lengths["mqar_layers"],
                                                     "pairs": list(ev.mqar_layers.pairs), "mqar_keys": keys})
    if ev.passkey is not None:
        requests["passkey"] = (["passkey"], {**common, "n": ev.passkey.n, "lengths": lengths["passkey"],
                                             "depths": list(ev.passkey.depths)})
    if ev.niah is not None:
        requests["niah"] = (["niah"], {**common, "n": ev.niah.n, "lengths": lengths["niah"],
                                       "depths": list(ev.niah.depths), "niah_variants": list(ev.niah.variants),
                                       "haystack": haystack})
    if ev.ppl is not None:
        requests["ppl"] = (["ppl"], {**common, "n": ev.ppl.windows, "batch_size": ev.ppl.batch_size,
                                     "ppl_file": heldout, "lengths": lengths["ppl"]})
    if ev.recall_qa is not None:
        requests["recall_qa"] = (["recall"], {**common, "n": ev.recall_qa.n, "recall_files": ev.recall_qa.files,
                                              "qa_max_tokens": ev.recall_qa.max_tokens})
    return requests


def task_versions(ev: EvalSpec, lengths: dict[str, list[int]]) -> dict[str, int]:
    """The version of every statex.eval task the spec's ``eval`` runs: an evaluation recorded with older ones is
    stale."""
    from statex.eval.tasks import TASK_VERSIONS

    return {name: TASK_VERSIONS[name] for names, _ in task_requests(ev, lengths, None, None).values()
            for name in names}


def check_evaluation(plan: Plan) -> None:
    """Every argument error of the evaluation, per family, before any work (files that the comparison writes
    itself, the generated held-out text and a trained tokenizer, are checked when they exist)."""
    from statex.data import load_tokenizer
    from statex.eval.runner import check_request, check_tokenizer

    spec = plan.spec
    tokenizer = None
    if is_builtin(plan.tokenizer) or Path(plan.tokenizer).is_file():
        tokenizer = load_tokenizer(plan.tokenizer)
    for fam in plan.families.values():
        for task, (names, options) in task_requests(spec.eval, fam.lengths, plan.heldout, spec.data.haystack).items():
            if task == "ppl" and spec.data.generated is not None and not Path(plan.heldout).is_file():
                continue  # the held-out text is written by the comparison itself
            sizes = {k: options[k] for k in ("n", "batch_size", "prefill_chunk") if k in options}
            typed = TaskOptions.of({k: v for k, v in options.items() if k not in ("n", "batch_size", "prefill_chunk",
                                                                                   "seed")})
            try:
                check_request(names, **sizes, options=typed)
                if tokenizer is not None:
                    check_tokenizer(names, tokenizer, typed)
            except StatexError as exc:
                raise StatexError(f"eval.{task} for {fam.name}: {exc}") from None
    if spec.eval.lm_eval is not None:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise StatexError("eval.lm_eval needs lm-evaluation-harness: pip install 'statex[eval]'") from None
        include = spec.eval.lm_eval.include
        if include is not None and not Path(include).is_dir():
            raise StatexError(f"eval.lm_eval.include {include}: no such directory")


def prompt_tokens(records: list[dict[str, Any]]) -> int:
    """The tokens an evaluation read: sequences x length of every grid cell and perplexity window."""
    total = 0
    for r in records:
        length = r["params"].get("length") if isinstance(r.get("params"), dict) else None
        if length is None:
            continue
        if isinstance(r["params"].get("tokens"), int):  # a task that says what it read (answers appended)
            total += r["params"]["tokens"]
        elif r["task"] in ("mqar", "passkey", "passkey_forced") or r["task"].startswith("niah"):
            total += r["n"] * length
        elif r["task"] == "mqar_layers":  # the pairs read once per sequence, the queries once per ablation
            pairs = 2 * r["params"]["pairs"]
            total += r["n"] * ((length - pairs) + (pairs if r["params"]["mode"] == "intact" else 0))
        elif r["task"] == "ppl" and r["metric"] == "loss" and r["setting"].endswith(" all"):
            total += r["n"]  # the tokens scored
    return total


def evaluate_stage(stage: Stage, ev: EvalSpec, tokenizer_path: str, heldout: str | None, haystack: str | None,
                   device: str, only: set[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(records, seconds per task) of the stage's model: every task of the spec, or the ``only`` ones (keys of
    ``task_requests``). Each record names the request that made it (``request``: a task key, ``lm_eval``, or
    ``model`` for the state and parameter counts), for a later partial evaluation; results.json drops it."""
    from statex.data import load_tokenizer
    from statex.io import load_model
    from statex.summary import describe_model
    from statex.eval import evaluate

    parts: dict[str, float] = {}
    begun = time.time()
    model = load_model(stage.model, device=device)
    if device == "cuda":  # every task's kernels compiled at once, in parallel
        from statex.runtime import prewarm

        prewarm.prepare(prewarm.forward_workloads(model.config.to_dict(), ev.batch_size, ev.prefill_chunk,
                                                  decode=True))
    parts["load"] = round(time.time() - begun, 1)
    tokenizer = load_tokenizer(tokenizer_path)
    name = stage.piece
    rows = []
    for task, (names, options) in task_requests(ev, stage.options["lengths"], heldout, haystack).items():
        if only is not None and task not in only:
            continue
        begun = time.time()
        records = evaluate({name: model}, names, tokenizer, progress=False, **options)
        if task == "niah" and ev.niah.forced:
            from statex.eval.tasks import niah

            records += niah.teacher_forced(model, tokenizer, name, stage.options["lengths"]["niah"], ev.niah.n,
                                           ev.seed, ev.batch_size, ev.prefill_chunk, variants=tuple(ev.niah.variants),
                                           haystack=Path(haystack).read_text(errors="replace") if haystack else None)
        if task == "passkey" and ev.passkey.forced:
            from statex.eval.tasks import passkey

            records += passkey.teacher_forced(model, tokenizer, name, stage.options["lengths"]["passkey"],
                                              ev.passkey.n, ev.seed, ev.batch_size, ev.prefill_chunk)
        rows += [_row(stage, r.task, r.setting, r.metric, r.value, r.n, r.params, task) for r in records]
        parts[task] = round(time.time() - begun, 1)
    if ev.lm_eval is not None and (only is None or "lm_eval" in only):
        from statex.eval.lm_eval_adapter import run_lm_eval

        begun = time.time()
        records = run_lm_eval(model, name, tokenizer, list(ev.lm_eval.tasks), limit=ev.lm_eval.limit,
                              include_path=ev.lm_eval.include)
        rows += [_row(stage, r.task, r.setting, r.metric, r.value, r.n, r.params, "lm_eval") for r in records]
        parts["lm_eval"] = round(time.time() - begun, 1)
    info = describe_model(model)
    rows.append(_row(stage, "state", "total", "elements", info["total_state_elements"], 1, {}, "model"))
    rows.append(_row(stage, "params", "total", "count", info["total_params"], 1, {}, "model"))
    return rows, parts


def _row(stage: Stage, task, setting, metric, value, n, params, request: str) -> dict[str, Any]:
    return {"family": stage.family, "variant": stage.variant, "seed": stage.seed,
            "model": f"{stage.family}-{stage.variant}", "task": task, "setting": setting, "metric": metric,
            "value": float(value), "n": int(n), "params": dict(params or {}), "request": request}
