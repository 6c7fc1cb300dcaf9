"""``run_compare``: a comparison's stages run in order (data and tokenizer, pretraining, then the independent
pieces: post-training and evaluation per variant and seed), side by side in processes of one thread each on a
CPU and one after the other on a GPU (side by side there too with ``jobs``: small models leave a GPU mostly idle). A stage that finished is never run again: its directory holds
``stage.json`` (seconds, tokens, tokens/s); a stopped training stage continues from its last checkpoint. A
resumed run must have the spec it started with, but for its seeds and the sections that change no trained model
(``eval``: every evaluation runs again; ``verdict``: the report is made again)."""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from statex.compare.plan import Plan, Stage, make_plan
from statex.compare.spec import CompareSpec, changed_field, evaluation_key
from statex.errors import StatexError
from statex.runtime import machine

SPEC_RECORD = "spec.json"
STAGE_RECORD = "stage.json"
PREWARM_LIMIT_S_PER_WORKLOAD = 60.0


RESUMABLE_CHANGES = ("eval", "verdict")  # on --resume: re-evaluated / re-judged; the trained models are kept


def check_run_directory(out: Path, spec: CompareSpec, resume: bool, ignore: tuple[str, ...] = ()) -> dict | None:
    """OUT must be new, empty (but for the names in ``ignore``), or (with ``resume``) a comparison of the same
    spec, but for its seeds and the sections that change no trained model (``RESUMABLE_CHANGES``). Returns the
    ``eval`` section the run was made with (None for a new run)."""
    if out.exists() and not out.is_dir():
        raise StatexError(f"--out {out}: exists and is not a directory")
    saved = out / SPEC_RECORD
    if saved.is_file():
        if not resume:
            raise StatexError(f"--out {out} holds a comparison already: pass --resume to continue it, or another --out")
        try:
            before = json.loads(saved.read_text())
        except (OSError, ValueError) as exc:
            raise StatexError(f"{saved}: unreadable ({exc})") from None
        now = spec.to_dict()
        field = changed_field({k: v for k, v in before.items() if k not in ("seeds", *RESUMABLE_CHANGES)},
                              {k: v for k, v in now.items() if k not in ("seeds", *RESUMABLE_CHANGES)})
        if field is not None:
            raise StatexError(f"--resume: {field} differs from the run in {out} (see {saved}); resume with the same "
                              "spec (seeds, eval and verdict may change) or choose another --out")
        earlier = before.get("eval") if isinstance(before.get("eval"), dict) else {}
        return {**{task: None for task in now["eval"]}, **earlier}  # tasks added to statex since: absent = None
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".") and p.name not in ignore):
        raise StatexError(f"--out {out}: holds other files and is not a comparison; choose a new or empty directory")
    return None


def _stamp_evaluations(plan: Plan, evaluation: dict[str, Any]) -> None:
    """Evaluation stages recorded before stages named their ``eval`` section: the section the run had."""
    from statex.files import write_atomic

    for stage in plan.stages:
        record = _finished(stage, any_evaluation=True) if stage.kind == "eval" else None
        if record is not None and "eval_key" not in record:
            write_atomic(stage.directory / STAGE_RECORD, json.dumps({**record, "eval_key": evaluation_key(evaluation)},
                                                                    indent=1) + "\n")


def _metric_rows(run: Path) -> list[dict[str, Any]]:
    """The readable records of a run's metrics.jsonl (none when it has none)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _tokens_per_s(run: Path) -> float | None:
    """The median logged training speed after the first steps (which include compilation)."""
    rows = [r for r in _metric_rows(run) if isinstance(r.get("tokens_per_s"), (int, float))]
    steady = [r["tokens_per_s"] for r in rows if r.get("step", 0) > 5] or [r["tokens_per_s"] for r in rows[1:]]
    return round(statistics.median(steady)) if steady else None


def _stage_config(plan: Plan, stage: Stage):
    """The ModelConfig a stage trains: a reference's own, a StateX variant's expanded one, else the base's."""
    fam = plan.families[stage.family]
    if stage.variant in fam.references:
        return fam.references[stage.variant]
    if fam.expansions.get(stage.variant):
        return fam.variants[stage.variant]
    return fam.config


def _trained_tokens(run: Path) -> int | None:
    """The tokens a finished run read, from its last metrics record."""
    return next((r["tokens"] for r in reversed(_metric_rows(run)) if isinstance(r.get("tokens"), int)), None)


def _seconds_before(run: Path) -> float:
    """The time a run had spent up to its latest checkpoint (the trainer's ``seconds`` in its metrics, which a
    resumed run continues): what a resumed stage adds to its own invocation's time."""
    from statex.train.checkpoint import checkpoint_dirs, checkpoint_step

    saved = checkpoint_dirs(run)
    step = checkpoint_step(saved[-1]) if saved else 0
    times = [r["seconds"] for r in _metric_rows(run) if isinstance(r.get("seconds"), (int, float))
             and isinstance(r.get("step"), int) and r["step"] <= step]
    return max(times, default=0.0)


def _finished(stage: Stage, any_evaluation: bool = False) -> dict[str, Any] | None:
    """The stage's record if it finished; an evaluation only if it ran with the spec's ``eval`` section now
    (``any_evaluation``: whatever section it ran with)."""
    try:
        record = json.loads((stage.directory / STAGE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if stage.kind == "eval" and not any_evaluation and (record.get("eval_key") != stage.options.get("eval_key")
                                                         or _outdated_tasks(stage, record)):
        return None
    return record


def _outdated_tasks(stage: Stage, record: dict[str, Any]) -> list[str]:
    """The tasks of an evaluation stage whose prompts or scoring changed since its record was written."""
    recorded = record.get("task_versions") or {}
    return [task for task, version in (stage.options.get("task_versions") or {}).items()
            if recorded.get(task, 1) != version]


def _release_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_pretraining(stages: list[Stage], progress: bool, init: tuple) -> None:
    """A base's pretraining phases in order; ``init`` makes the first phase's initial weights, each later phase
    trains the previous one's final model."""
    for k, stage in enumerate(stages):
        run_train_stage(stage, progress, init if k == 0 else None)


def run_train_stage(stage: Stage, progress: bool, init: tuple | None = None) -> dict[str, Any]:
    """Train (or continue) one stage; ``init``: (config, init options, seed) of a pretrained base's weights."""
    from statex.train import train as train_run
    from statex.files import remove_path, write_atomic
    from statex.train.checkpoint import checkpoint_dirs

    done = _finished(stage)
    if done is not None:
        return done
    if init is not None:
        from statex.models.init import initialise

        target = Path(stage.train.model)
        if not (target / "config.json").is_file():  # the same initial weights however often the stage restarts
            initialise(*init).save_pretrained(target)
    if stage.directory.exists() and not checkpoint_dirs(stage.directory):
        remove_path(stage.directory)  # started, never checkpointed: nothing to continue from
    resume = bool(stage.directory.exists() and checkpoint_dirs(stage.directory))
    earlier = _seconds_before(stage.directory) if resume else 0.0
    config = dataclasses.replace(stage.train, resume=resume, progress=progress)
    begun = time.time()
    summary = train_run(config)
    if summary.get("stopped"):
        raise StatexError(f"{stage.name} stopped at step {summary['steps']} with a checkpoint; continue with --resume")
    probes = next((r["probes"] for r in reversed(_metric_rows(stage.directory)) if isinstance(r.get("probes"), dict)),
                  None)
    # seconds: the whole stage, a resumed one's earlier invocations included (up to the checkpoint it continued)
    record = {"seconds": round(time.time() - begun + earlier, 1), "machine": machine.describe(stage.train.device),
              "tokens": _trained_tokens(stage.directory) or stage.tokens,
              "tokens_per_s": _tokens_per_s(stage.directory), "resumed": resume,
              **({"earlier_seconds": round(earlier, 1)} if resume else {}),
              "final_loss": summary.get("final_loss"), "heldout_loss": summary.get("heldout_loss"),
              **({"probes": probes} if probes else {})}
    from statex.strict_json import dumps_strict

    write_atomic(stage.directory / STAGE_RECORD, dumps_strict(record, indent=1) + "\n")
    return record


def run_eval_stage(stage: Stage, ev, tokenizer: str, heldout: str | None, haystack: str | None,
                   device: str) -> dict[str, Any]:
    from statex.compare.evaluation import evaluate_stage, prompt_tokens
    from statex.files import write_atomic
    from statex.strict_json import dumps_strict

    done = _finished(stage)
    if done is not None and (stage.directory / "records.json").is_file():
        return done
    kept, redo, earlier = _partial_evaluation(stage, ev, heldout, haystack)  # earlier: seconds per kept task
    begun = time.time()
    rows, parts = evaluate_stage(stage, ev, tokenizer, heldout, haystack, device, only=redo)
    seconds = time.time() - begun
    if redo is not None:  # the unchanged tasks' records and times kept
        seconds += sum(v for k, v in earlier.items() if k not in parts and k != "load")
        rows, parts = kept + rows, {**earlier, **parts}
    tokens = prompt_tokens(rows)
    stage.directory.mkdir(parents=True, exist_ok=True)
    write_atomic(stage.directory / "records.json", dumps_strict(rows, indent=1) + "\n")
    record = {"seconds": round(seconds, 1), "machine": machine.describe(device), "tokens": tokens,
              "tokens_per_s": round(tokens / max(seconds, 1e-9)), "parts": parts,
              "eval_key": stage.options.get("eval_key"), "task_versions": stage.options.get("task_versions")}
    write_atomic(stage.directory / STAGE_RECORD, json.dumps(record, indent=1) + "\n")
    return record


def _partial_evaluation(stage: Stage, ev, heldout: str | None,
                        haystack: str | None) -> tuple[list[dict], set[str] | None, dict[str, float]]:
    """(records kept, task keys to evaluate again, the earlier seconds per task) when only the versions of some tasks
    changed since the stage's evaluation (its eval section the same, its records naming their requests); else
    ([], None, {}): every task is evaluated."""
    from statex.compare.evaluation import task_requests

    record = _finished(stage, any_evaluation=True)
    if record is None or record.get("eval_key") != stage.options.get("eval_key"):
        return [], None, {}
    try:
        rows = json.loads((stage.directory / "records.json").read_text())
    except (OSError, ValueError):
        return [], None, {}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "request" in r for r in rows):
        return [], None, {}  # written before records named their requests
    outdated = set(_outdated_tasks(stage, record))
    requests = task_requests(ev, stage.options["lengths"], heldout, haystack)
    redo = {key for key, (names, _) in requests.items() if outdated & set(names)}
    kept = [r for r in rows if r["request"] not in redo and r["request"] != "model"]
    return kept, redo, record.get("parts", {})


def run_piece(stages: list[Stage], ev, tokenizer: str, heldout: str | None, haystack: str | None, device: str,
              progress: bool) -> list[str]:
    """One independent piece: [eval] of a base, or [train, eval] of a variant and seed."""
    for stage in stages:
        if stage.kind == "train":
            run_train_stage(stage, progress)
        else:
            run_eval_stage(stage, ev, tokenizer, heldout, haystack, device)
        if device == "cuda":
            _release_gpu()
    return [s.name for s in stages]


def _choose_recall_layers(plan: Plan, ev, data, verbose: bool, common: dict[str, Any], say) -> None:
    """Variants with ``layers: "recall:K"``: their bases evaluated first where no choice is kept yet, then every
    such variant's layers set (compare.recall_layers)."""
    from statex.compare import recall_layers
    from statex.compare.parallel import run_tasks

    waiting = recall_layers.pending(plan)
    unchosen = {family for family, variant in waiting
                if not (plan.out / family / variant.label / recall_layers.CHOICE_FILE).is_file()}
    first = {stages[0].piece: stages for stages in plan.pieces()
             if stages[0].family in unchosen and stages[0].variant == "base" and _finished(stages[0]) is None}
    if first:
        say("evaluating the base first: a variant's layers are chosen from its mqar_layers")
        run_tasks({name: (run_piece, (stages, ev, plan.tokenizer, plan.heldout, data.haystack, plan.device, verbose))
                   for name, stages in first.items()}, watch={}, **common)
    if waiting:
        recall_layers.resolve(plan, say)


def _prepare_data(plan: Plan, say) -> None:
    from statex.data.templates import write_corpus, write_heldout

    generated = plan.spec.data.generated
    data_dir = plan.out / "data"
    if generated is not None:
        if not (data_dir / "corpus.jsonl").is_file():
            write_corpus(data_dir, generated.get("documents", 2000), generated.get("seed", 0))
        if plan.spec.data.heldout is None and not (data_dir / "heldout.txt").is_file():
            write_heldout(data_dir, generated.get("heldout_documents", 400), generated.get("seed", 0))
    if isinstance(plan.spec.data.tokenizer, dict) and not Path(plan.tokenizer).is_file():
        from statex.data.tokenizers import train_bpe_tokenizer

        say(f"tokenizer: byte-level BPE of {plan.vocab_size} tokens on {plan.text}")
        Path(plan.tokenizer).parent.mkdir(parents=True, exist_ok=True)
        train_bpe_tokenizer([Path(p) for p in plan.text.split(",")], plan.vocab_size, plan.tokenizer,
                            show_progress=False)
        from statex.compare.evaluation import check_evaluation

        check_evaluation(plan)  # the checks that needed the tokenizer


def workloads(plan: Plan) -> list:
    """Every GPU workload of the plan's stages, as the trainer and the evaluation will ask for them."""
    from statex.runtime import prewarm

    works, seen = [], set()

    def add(work):
        if work.key() not in seen:
            seen.add(work.key())
            works.append(work)

    ev = plan.spec.eval
    for stage in plan.stages:
        if stage.train is None:
            continue
        from statex.data.dataset import parse_synthetic, sequence_lengths

        config = _stage_config(plan, stage)
        t = stage.train
        lengths = {t.seq_len, *sequence_lengths(t.seq_len, parse_synthetic(t.synthetic), t.data is not None)}
        for length in sorted(lengths):  # a mixture trains batches of each of its lengths
            add(prewarm.Workload(config.to_dict(), stage.train.batch_size, length, train=True, forward=True,
                                 precision=stage.train.precision))
        for work in prewarm.forward_workloads(config.to_dict(), ev.batch_size, ev.prefill_chunk, decode=True):
            add(work)
    return works


def run_compare(spec: CompareSpec, out: str | Path, resume: bool = False, jobs: int | None = None,
                progress: bool = True, command: str | None = None, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole comparison; returns the report's summary {"records", "verdicts", "out", "plots"}. ``ignore``:
    names in OUT that are not the comparison's (the demo's re-made bases)."""
    from statex.compare.parallel import run_tasks
    from statex.compare.report import write_report
    from statex.files import write_atomic
    from statex.locks import RunLock

    out = Path(out)
    if jobs is not None and jobs < 1:
        raise StatexError(f"--jobs must be >= 1, got {jobs}")
    plan = make_plan(spec, out)
    evaluated_with = check_run_directory(out, spec, resume, ignore)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def say(message: str) -> None:
        if progress:
            print(f"== [{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    with RunLock(out, "comparison"):
        if evaluated_with is not None:  # before the spec record changes, so that an interrupted resume stays right
            _stamp_evaluations(plan, evaluated_with)
            if evaluation_key(evaluated_with) != evaluation_key(spec.to_dict()["eval"]):
                say("the eval section changed: every model is evaluated again (its training is kept)")
            else:
                outdated = sorted({task for stage in plan.stages if stage.kind == "eval"
                                   for record in [_finished(stage, any_evaluation=True)] if record is not None
                                   for task in _outdated_tasks(stage, record)})
                if outdated:
                    say(f"{', '.join(outdated)} changed in statex since these models were evaluated: they are "
                        "evaluated again (their training is kept)")
        write_atomic(out / SPEC_RECORD, json.dumps(spec.to_dict(), indent=1) + "\n")
        _prepare_data(plan, say)
        gpu = plan.device == "cuda"
        if gpu:
            from statex.runtime import autotune, prewarm, settings

            if autotune.resolve_mode(None) != "off" and settings.current().backend != "torch":
                say("compiling the GPU kernels of every stage")
            works = workloads(plan)
            prewarm.prepare(works, progress=progress, limit_s=PREWARM_LIMIT_S_PER_WORKLOAD * len(works))
        ev, data = plan.spec.eval, plan.spec.data
        verbose = progress and (jobs == 1 or (gpu and not jobs))  # stages in this process show their progress bars
        pretrain = {stages[0].piece: (run_pretraining, (stages, verbose, (_stage_config(plan, stages[0]),
                                                                          spec.families[stages[0].family].base.init,
                                                                          spec.families[stages[0].family].base.seed)))
                    for stages in plan.pretraining() if any(_finished(s) is None for s in stages)}
        # a GPU runs one piece at a time unless asked: several small models can share it
        common = dict(jobs=(jobs or 1) if gpu else jobs, progress=progress, log_dir=out / "logs", started=started)
        if pretrain:
            run_tasks(pretrain, watch={name: next(s.directory for s in args[0] if _finished(s) is None)
                                       for name, (_, args) in pretrain.items()}, **common)
        _choose_recall_layers(plan, ev, data, verbose, common, say)
        pieces = {stages[0].piece: stages for stages in plan.pieces()
                  if any(_finished(s) is None for s in stages)}
        tasks = {name: (run_piece, (stages, ev, plan.tokenizer, plan.heldout, data.haystack, plan.device, verbose))
                 for name, stages in pieces.items()}
        watch = {name: next((s.directory for s in stages if s.kind == "train"), None)
                 for name, stages in pieces.items()}
        if tasks:
            say(f"{len(tasks)} of {len(plan.pieces())} pieces to run")
            run_tasks(tasks, watch={k: v for k, v in watch.items() if v is not None}, **common)
        records, timings = [], {}
        for stage in plan.stages:
            timings[stage.name] = _finished(stage)
            if stage.kind == "eval":
                records += [{k: v for k, v in r.items() if k != "request"}
                            for r in json.loads((stage.directory / "records.json").read_text())]
        write_atomic(out / "stages.json", json.dumps(timings, indent=1) + "\n")
        summary = write_report(out, records, plan, timings, time.time() - started,
                               command or f"statex compare SPEC --out {out}")
    say(f"done: {out / 'report.md'}")
    return summary
