"""`statex compare` end to end on a CPU: every stage of a tiny spec, resume after a kill, refusals."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import statex
from statex.cli import main

from .conftest import TINY


def _argv(out, corpus, *extra):
    return ["compare", str(TINY), "--data", str(corpus), "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("tiny") / "run"
    started = time.time()
    assert main(_argv(out, corpus, "--jobs", "1")) == 0
    return out, time.time() - started


def test_every_stage_runs_and_reports(finished):
    out, seconds = finished
    assert seconds < 60, seconds
    records = json.loads((out / "results.json").read_text())
    assert all(set(r) >= {"family", "variant", "seed", "task", "setting", "metric", "value"} for r in records)
    assert {(r["family"], r["variant"]) for r in records} == {
        ("gla", "base"), ("gla", "lpt"), ("gla", "statex-inherit"),
        ("mamba2", "base"), ("mamba2", "lpt"), ("mamba2", "statex-preserve")}
    assert {r["seed"] for r in records if r["variant"] != "base"} == {0, 1}
    assert {r["task"] for r in records} == {"mqar", "mqar_layers", "passkey", "passkey_forced", "niah_single_1",
                                            "niah_single_2", "niah_single_1_forced", "niah_single_2_forced", "ppl",
                                            "state", "params"}
    # which layers carry the pairs: at the base's context, both layers of every model, each seed
    layers = [r for r in records if r["task"] == "mqar_layers" and r["family"] == "gla" and r["variant"] == "lpt"]
    assert {(r["seed"], r["params"]["mode"], r["params"]["layer"]) for r in layers} == {
        (s, m, i) for s in (0, 1) for m, i in (("intact", None), ("all", None), ("reset", 0), ("reset", 1),
                                                ("only", 0), ("only", 1))}
    assert {(r["params"]["length"], r["params"]["pairs"]) for r in layers} == {(64, 8)}
    intact = {r["seed"]: r["value"] for r in layers if r["params"]["mode"] == "intact"}
    plain = {r["seed"]: r["value"] for r in records if r["task"] == "mqar" and r["family"] == "gla"
             and r["variant"] == "lpt" and r["params"] == {"length": 64, "pairs": 8}}
    # the same sequences as mqar's cell, read in two pieces instead of one (an argmax near-tie at most: 1 of 32)
    assert all(abs(intact[s] - plain[s]) <= 1 / 32 for s in (0, 1)), (intact, plain)
    # the "base" and "post" lengths resolve per family: the pretraining context (64) and post-training (256)
    assert {r["params"]["length"] for r in records if r["task"] == "mqar"} == {64, 256}
    assert {(r["params"]["length"], r["params"]["pairs"]) for r in records if r["task"] == "mqar"} == {
        (64, 8), (256, 8), (256, 32)}  # a sequence of length L holds at most L/4 pairs
    state = {(r["family"], r["variant"]): r["value"] for r in records if r["task"] == "state"}
    assert state[("gla", "statex-inherit")] > state[("gla", "lpt")] == state[("gla", "base")]
    assert state[("mamba2", "statex-preserve")] > state[("mamba2", "lpt")]
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == {f"{f}/base/{k}" for f in ("gla", "mamba2") for k in ("train", "eval")} | {
        f"{f}/{v}/seed{s}/{k}" for f, v in (("gla", "lpt"), ("gla", "statex-inherit"), ("mamba2", "lpt"),
                                            ("mamba2", "statex-preserve"))
        for s in (0, 1) for k in ("train", "eval")}
    train = stages["gla/lpt/seed0/train"]
    assert train["tokens"] == 4 * 2 * 256 and train["tokens_per_s"] > 0 and train["seconds"] > 0
    assert stages["gla/lpt/seed0/eval"]["tokens"] > 0
    # every stage says where it ran; the report names the machine and the tokens post-training read
    from statex.runtime.machine import processor_name, summary

    assert {s["machine"]["device"] for s in stages.values()} == {processor_name()}
    assert {s["machine"]["torch"] for s in stages.values()} == {torch.__version__}
    report = (out / "report.md").read_text()
    assert f"on {summary(train['machine'])}. Seeds" in report
    assert "Post-training (every variant alike): 4 steps of 2 sequences of up to 256 tokens (2,048 tokens as read)" \
        in report
    for text in ("## Verdicts", "Rule:", "| gla | statex-inherit |", "## Stages", "## Spec (resolved)",
                 "passkey by length", "niah_single_2 by length (mean over depths and seeds; / the answer tokens "
                 "predicted teacher-forced", "Which layers carry the pairs: MQAR at length 64 "
                 "with 8 pairs", "| layer 1 emptied / only kept |"):
        assert text in report, text
    for plot in ("gla_capacity.png", "mamba2_capacity.png", "gla/passkey_heatmap.png", "gla/niah_single_2_heatmap.png",
                 "mamba2/niah_single_1_heatmap.png"):
        assert (out / plot).is_file(), plot
    # the expanded models are what the spec asked for
    expanded = statex.load_model(out / "mamba2" / "statex-preserve" / "seed1" / "train" / "final")
    assert [s.d_state for s in expanded.config.layers] == [8, 16]
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_resume_of_a_finished_run_changes_nothing_and_a_changed_spec_is_refused(finished, corpus, capsys):
    out, _ = finished
    before = {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    results = (out / "results.json").read_text()
    assert main(_argv(out, corpus)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(_argv(out, corpus, "--resume")) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")} == before
    assert (out / "results.json").read_text() == results
    assert main(_argv(out, corpus, "--resume", "--set", "train.lr=2e-3")) == 2
    assert "--resume: train.lr differs from the run" in capsys.readouterr().err
    assert main(_argv(out, corpus, "--resume", "--set", "families.gla.variants[1]=x")) == 2  # not a field path
    capsys.readouterr()


def test_a_run_killed_mid_stage_resumes_to_the_same_results(finished, corpus, tmp_path):
    reference, _ = finished
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "statex", *_argv(out, corpus, "--jobs", "1")]
    # the killed run computes with as many threads as this process (the reference's), so that its steps up to
    # the checkpoint round as the reference's did
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
                                    "OMP_NUM_THREADS": str(torch.get_num_threads())})
    target = out / "gla" / "lpt" / "seed0" / "train" / "checkpoints"
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None and not any(target.glob("step*")):
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()
    assert main(_argv(out, corpus, "--jobs", "1", "--resume")) == 0
    resumed, straight = (json.loads((d / "results.json").read_text()) for d in (out, reference))
    # the same records; values equal but for float rounding (CPU kernels may sum in another order from run to run:
    # 1e-7 has been seen), while a resume that re-read data or lost optimizer state would move them by far more
    assert [{**r, "value": None} for r in resumed] == [{**r, "value": None} for r in straight]
    assert [r["value"] for r in resumed] == pytest.approx([r["value"] for r in straight], rel=1e-5, abs=1e-6)
    # the resumed stage's time includes what its killed invocation spent up to the checkpoint it continued
    record = json.loads((out / "stages.json").read_text())["gla/lpt/seed0/train"]
    assert record["resumed"] and 0 < record["earlier_seconds"] <= record["seconds"]


def test_more_seeds_on_resume_runs_only_the_new_pieces(finished, corpus, tmp_path):
    import shutil

    out = tmp_path / "more"
    shutil.copytree(finished[0], out)
    spec = json.loads((out / "spec.json").read_text())
    assert spec["seeds"] == 2
    # the copy's stage directories hold absolute paths of the original only in logs; its spec names the same files
    before = {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    assert main(_argv(out, corpus, "--jobs", "1", "--resume", "--seeds", "3", "--families", "gla")) == 2  # families
    assert main(_argv(out, corpus, "--jobs", "1", "--resume", "--seeds", "3")) == 0
    after = {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    assert all(after[p] == t for p, t in before.items())
    assert {p.parent.parent.name for p in set(after) - set(before)} == {"seed2"}
    records = json.loads((out / "results.json").read_text())
    assert {r["seed"] for r in records if r["variant"] == "lpt"} == {0, 1, 2}


def test_a_changed_evaluation_on_resume_evaluates_again_and_keeps_the_training(finished, corpus, tmp_path):
    import shutil

    out = tmp_path / "eval-changed"
    shutil.copytree(finished[0], out)
    def stamps(kind):  # training: its stage record; evaluation: its records, written only when it runs
        name = "stage.json" if kind == "train" else "records.json"
        return {p: p.stat().st_mtime_ns for p in out.rglob(name) if p.parent.name == kind}

    trained, evaluated = stamps("train"), stamps("eval")
    # stages recorded before they named their eval section: the run's section is theirs
    for path in out.rglob("eval/stage.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in record.items() if k != "eval_key"}))
    # a verdict alone: nothing runs again, the report judges anew
    assert main(_argv(out, corpus, "--resume", "--set", "verdict.capacity_threshold=0.5")) == 0
    assert stamps("train") == trained and stamps("eval") == evaluated
    assert "scores below 0.5" in (out / "report.md").read_text()
    # an eval section with another MQAR grid: every model evaluated again from its kept weights
    assert main(_argv(out, corpus, "--jobs", "1", "--resume", "--set", "eval.mqar.pairs=[8]",
                      "--set", "verdict.capacity_threshold=0.5")) == 0
    assert stamps("train") == trained
    now = stamps("eval")
    assert set(now) == set(evaluated) and all(now[p] != t for p, t in evaluated.items())
    records = json.loads((out / "results.json").read_text())
    assert {r["params"]["pairs"] for r in records if r["task"] == "mqar"} == {8}
    assert json.loads((out / "spec.json").read_text())["eval"]["mqar"]["pairs"] == [8]
    # and the trained models were not: a changed training field is still refused
    assert main(_argv(out, corpus, "--resume", "--set", "eval.mqar.pairs=[8]", "--set", "train.lr=2e-3")) == 2


@pytest.mark.parametrize("records_name_their_requests", [True, False])
def test_a_task_changed_in_statex_evaluates_again_on_resume(finished, corpus, tmp_path, capsys, monkeypatch,
                                                            records_name_their_requests):
    """An evaluation recorded before a task's prompts changed (its version absent, i.e. 1, where NIAH is 2 now) is
    stale: --resume evaluates that task again for that model alone, keeps its other records and its training, and
    the records come out as a whole evaluation's; records of an older run that do not name their requests make it
    evaluate every task."""
    import shutil

    import statex.eval
    from statex.eval.tasks import TASK_VERSIONS

    assert TASK_VERSIONS["niah"] > 1
    out = tmp_path / "task-changed"
    shutil.copytree(finished[0], out)
    stale = next(p for p in out.rglob("eval/stage.json") if p.parent.parent.name == "seed1")
    record = json.loads(stale.read_text())
    assert record["task_versions"]["niah"] == TASK_VERSIONS["niah"]
    stale.write_text(json.dumps({k: v for k, v in record.items() if k != "task_versions"}))
    rows = json.loads((stale.parent / "records.json").read_text())
    assert {r["request"] for r in rows} == {"mqar", "mqar_layers", "passkey", "niah", "ppl", "model"}
    if not records_name_their_requests:
        (stale.parent / "records.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "request"}
                                                               for r in rows]))
    results = json.loads((out / "results.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.parent.name in ("train", "eval")}
    asked, evaluate = [], statex.eval.evaluate
    monkeypatch.setattr(statex.eval, "evaluate", lambda models, names, *a, **k: asked.append(tuple(names))
                        or evaluate(models, names, *a, **k))
    assert main(["compare", str(TINY), "--data", str(corpus), "--out", str(out), "--jobs", "1", "--resume"]) == 0
    assert "niah changed in statex since these models were evaluated" in capsys.readouterr().out
    if records_name_their_requests:
        assert asked == [("niah",)]
    else:
        assert sorted(asked) == [("mqar",), ("mqar_layers",), ("niah",), ("passkey",), ("ppl",)]
    changed = {p for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert changed == {stale, stale.parent / "records.json"}
    again = json.loads(stale.read_text())
    assert again["task_versions"] == record["task_versions"] and set(again["parts"]) == set(record["parts"])
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731  the same records, in any order
    assert sorted(map(key, json.loads((stale.parent / "records.json").read_text()))) == sorted(map(key, rows))
    assert sorted(map(key, json.loads((out / "results.json").read_text()))) == sorted(map(key, results))
    assert all("request" not in r for r in results)


def test_one_prewarm_covers_the_workloads_every_stage_asks_for(finished, corpus):
    """The keys of engine.workloads() equal those the trainer and the evaluation compute from the stages' real
    configs (history and all), so on CUDA no stage starts a prewarm of its own."""
    from statex.compare.engine import workloads
    from statex.compare.plan import make_plan
    from statex.compare.spec import load_spec, parse_override
    from statex.runtime import prewarm

    out, _ = finished
    spec = load_spec(TINY, [parse_override(f"data.text={corpus}/train"),
                            parse_override(f"data.heldout={corpus}/heldout/heldout.txt"),
                            parse_override(f"data.haystack={corpus}/heldout/haystack.txt")])
    plan = make_plan(spec, out)
    planned = {w.key() for w in workloads(plan)}
    for stage in plan.stages:
        if stage.kind == "eval":
            config = statex.load_config(stage.model)[0].to_dict()
            for work in prewarm.forward_workloads(config, spec.eval.batch_size, spec.eval.prefill_chunk, decode=True):
                assert work.key() in planned, stage.name
        else:
            config = statex.load_config(stage.directory / "final")[0].to_dict()
            work = prewarm.Workload(config, stage.train.batch_size, stage.train.seq_len, train=True, forward=True,
                                    precision=stage.train.precision)
            assert work.key() in planned, stage.name


def test_outputs_that_are_not_a_comparison_are_refused_untouched(tmp_path, corpus, capsys):
    (tmp_path / "file").write_text("x")
    assert main(_argv(tmp_path / "file", corpus)) == 2
    assert (tmp_path / "file").read_text() == "x"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(_argv(other, corpus)) == 2
    assert "not a comparison" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert main(_argv("", corpus)) == 2
    assert "the output path is empty" in capsys.readouterr().err
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    (spec_dir / "tiny.yaml").write_text(TINY.read_text())
    assert main(["compare", str(spec_dir / "tiny.yaml"), "--data", str(corpus), "--out", str(spec_dir)]) == 2
    assert sorted(p.name for p in spec_dir.iterdir()) == ["tiny.yaml"]
    assert main(["compare", str(tmp_path / "nope.yaml")]) == 2
    assert "no such spec file" in capsys.readouterr().err
