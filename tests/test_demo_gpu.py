"""`statex demo --preset gpu`: the whole staged path on a CPU with --budget tiny (a stand-in corpus of template
text), resuming, the verdict rule, and the flags it refuses."""
import json

import pytest

import statex
from statex.cli import main
from statex.demo.data import filler_documents
from statex.demo.gpu import check_corpus, preset
from statex.demo.gpu_report import verdicts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    (root / "heldout").mkdir()
    (root / "train" / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                                        for d in filler_documents(600, 0)))
    (root / "heldout" / "heldout.txt").write_text("\n\n".join(filler_documents(200, 1)))
    (root / "heldout" / "haystack.txt").write_text(" ".join(filler_documents(100, 2)))
    return root


def test_the_tiny_budget_runs_every_stage_and_resumes(tmp_path, corpus, capsys):
    out = tmp_path / "gpu"
    argv = ["demo", "--preset", "gpu", "--budget", "tiny", "--data", str(corpus), "--out", str(out), "--families",
            "gla", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in records} == {"base", "lpt", "statex-reinit", "statex-inherit"}
    assert {r["task"] for r in records} >= {"passkey", "niah_single_1", "niah_single_2", "mqar", "ppl", "state"}
    assert all(set(r) >= {"family", "variant", "task", "setting", "metric", "value", "seed"} for r in records)
    lengths = {r["params"]["length"] for r in records if r["task"] == "passkey"}
    assert lengths == set(preset("tiny").eval_lengths) and max(lengths) >= 8 * preset("tiny").pretrain["gla"].seq_len
    report = (out / "report.md").read_text()
    assert "| gla | statex-reinit |" in report and "| gla | statex-inherit |" in report
    assert "Passkey by length" in report and "has not read the needle predicts" in report
    assert (out / "gla" / "passkey_heatmap.png").is_file() and (out / "gla" / "niah_single_2_heatmap.png").is_file()
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == {f"gla/{v}/{s}" for v in ("base", "lpt", "statex-reinit", "statex-inherit")
                           for s in ("train", "eval")}
    state = {r["variant"]: r["value"] for r in records if r["task"] == "state"}
    assert state["statex-reinit"] > state["lpt"] == state["base"]
    capsys.readouterr()
    assert main(argv) == 2 and "pass --resume" in capsys.readouterr().err  # never overwrites a run
    before = (out / "results.json").read_text()
    assert main(argv + ["--resume"]) == 0  # every stage finished: nothing runs again, the same results
    assert (out / "results.json").read_text() == before
    assert main(argv[:4] + ["call"] + argv[5:] + ["--resume"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_the_corpus_layout_is_checked(tmp_path):
    with pytest.raises(statex.StatexError, match="needs --data CORPUS"):
        check_corpus(None)
    (tmp_path / "train").mkdir()
    with pytest.raises(statex.StatexError, match=r"missing .*heldout\.txt.*statex demo corpus"):
        check_corpus(tmp_path)


@pytest.mark.parametrize("flags,message", [
    (["--preset", "gpu", "--quick"], "--quick: not for --preset gpu"),
    (["--preset", "gpu", "--seeds", "2", "--jobs", "2"], "--seeds, --jobs: not for --preset gpu"),
    (["--data", "x"], "--data and --budget belong to --preset gpu"),
    (["--preset", "gpu", "--data", "nowhere"], "missing nowhere/train"),
])
def test_flags(tmp_path, capsys, flags, message):
    assert main(["demo", *flags, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _record(variant, task, value, **params):
    setting = "file=x all" if task == "ppl" else "cell"
    return {"family": "gla", "variant": variant, "seed": 0, "task": task, "setting": setting,
            "metric": "loss" if task == "ppl" else "accuracy", "value": value, "params": params}


def test_the_verdict_rule():
    settings = preset("lease")
    records = []
    for variant, accuracies, loss in (("base", (1.0, 0.5, 0.2), 3.0), ("lpt", (1.0, 0.5, 0.3), 2.8),
                                      ("statex-inherit", (0.0, 0.7, 0.4), 2.9), ("statex-reinit", (1.0, 0.9, 0.9), 3.2)):
        records += [_record(variant, "mqar", a, length=2048, pairs=p) for a, p in zip(accuracies, (16, 64, 256))]
        records.append(_record(variant, "ppl", loss))
        records.append(_record(variant, "passkey", 0.5, length=4096, depth=0.5))
    found = {v["variant"]: v for v in verdicts(records, settings)}
    inherit = found["statex-inherit"]  # only the two cells past capacity count: (0.7-0.5 + 0.4-0.3) / 2
    assert inherit["cells_past_capacity"] == 2 and inherit["gain"] == pytest.approx(0.15)
    assert inherit["beats_lpt"] and inherit["loss_ratio"] == pytest.approx(2.9 / 2.8)
    assert found["statex-reinit"]["gain"] > 0 and not found["statex-reinit"]["beats_lpt"]  # loss 14% above LPT's
    assert inherit["recall_gain"]["passkey"] == 0.0
    assert inherit["verdict"] == "yes" and found["statex-reinit"]["verdict"] == "no"


def _mqar_run(accuracies: dict[str, float]) -> list[dict]:
    records = []
    for variant, accuracy in accuracies.items():
        records += [_record(variant, "mqar", accuracy, length=2048, pairs=p) for p in (16, 64)]
        records.append(_record(variant, "ppl", 3.0))
    return records


def test_a_gain_below_the_noise_or_without_recall_is_no_win():
    settings = preset("call")
    # the first GPU run (--budget call): every cell 0.000-0.002; a +0.0002 "gain" said "yes"
    found = verdicts(_mqar_run({"base": 0.0, "lpt": 0.0, "statex-reinit": 0.0002}), settings)[0]
    assert found["gain"] > 0 and not found["beats_lpt"] and found["verdict"] == "no recall"
    found = verdicts(_mqar_run({"base": 0.3, "lpt": 0.4, "statex-reinit": 0.41}), settings)[0]
    assert found["gain"] == pytest.approx(0.01) and found["verdict"] == "no"  # recall, but within the noise
    found = verdicts(_mqar_run({"base": 0.3, "lpt": 0.4, "statex-reinit": 0.43}), settings)[0]
    assert found["verdict"] == "yes" and found["beats_lpt"]


def test_a_stopped_stage_continues_from_its_checkpoint(tmp_path, corpus, capsys, monkeypatch):
    import statex.demo.gpu as gpu

    options = gpu._train_options
    monkeypatch.setattr(gpu, "_train_options", lambda *a: {**options(*a), "stop_at_step": 1})
    argv = ["demo", "--preset", "gpu", "--budget", "tiny", "--data", str(corpus), "--out", str(tmp_path / "o"),
            "--families", "mamba2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert "mamba2/base stopped at step 1 with a checkpoint; continue with --resume" in capsys.readouterr().err
    monkeypatch.setattr(gpu, "_train_options", options)
    assert main(argv + ["--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "o/mamba2/base/run/metrics.jsonl").read_text()
             .splitlines() if '"loss"' in line]
    assert steps == list(range(1, preset("tiny").pretrain["mamba2"].steps + 1))  # step 1 once, then the rest
    assert json.loads((tmp_path / "o/results.json").read_text())


def test_one_prewarm_covers_the_workloads_every_stage_asks_for(tmp_path, corpus):
    """The keys of gpu.workloads() equal those the trainer and the evaluation compute from the stages' real
    configs (history and all), so on CUDA no stage starts a prewarm of its own."""
    from statex.demo import gpu
    from statex.ops import prewarm

    settings = preset("tiny")
    assert main(["demo", "--preset", "gpu", "--budget", "tiny", "--data", str(corpus), "--out", str(tmp_path / "o"),
                 "--families", "gla", "--device", "cpu", "--no-progress"]) == 0
    planned = {w.key() for w in gpu.workloads(settings, ["gla"])}
    pre, post = settings.pretrain["gla"], settings.post["gla"]
    for variant in ("base", "lpt", "statex-reinit", "statex-inherit"):
        config = statex.load_config(tmp_path / "o" / "gla" / variant / "run" / "final")[0].to_dict()
        budget = pre if variant == "base" else post
        trainer = prewarm.Workload(config, budget.batch, budget.seq_len, train=True, forward=True, precision="bf16")
        assert trainer.key() in planned, variant
        for work in prewarm.forward_workloads(config, gpu.EVAL_BATCH, gpu.PREFILL_CHUNK, decode=True):
            assert work.key() in planned, variant


def test_the_bases_start_from_the_presets_init(tmp_path):
    import torch

    import statex.demo.gpu as gpu

    settings = preset("tiny")
    for family in ("gla", "mamba2"):
        stage = gpu._Stage(family, "base", tmp_path / family / "base")
        gpu._write_init(settings, stage)
        model = statex.load_model(stage.directory / "init")
        assert model.config.to_dict() == gpu._model_config(settings, family).to_dict()
        if family == "mamba2":  # the miniature's departures: A in [0.1, 1], D = 0
            for block in model.backbone.layers:
                A = torch.exp(block.mixer.A_log)
                assert torch.all(block.mixer.D == 0) and 0.1 <= A.min() and A.max() <= 1.0 + 1e-6
        written = (stage.directory / "init" / "model.safetensors").stat().st_mtime_ns
        gpu._write_init(settings, stage)  # a resumed run keeps the weights it started from
        assert (stage.directory / "init" / "model.safetensors").stat().st_mtime_ns == written


def test_the_mqar_key_range_and_loss_averaging_reach_training_and_evaluation(tmp_path, corpus, monkeypatch):
    import dataclasses

    import statex.demo.gpu as gpu
    from statex.eval.tasks import mqar

    tiny = gpu.preset("tiny")
    changed = dataclasses.replace(tiny, mqar_keys=40, loss_average="sequences")
    monkeypatch.setattr(gpu, "preset", lambda name: changed)
    asked = []
    original = mqar.generate_examples
    monkeypatch.setattr(mqar, "generate_examples", lambda *a, **k: asked.append(a[5]) or original(*a, **k))
    gpu.run_gpu_demo(tmp_path / "o", corpus, "tiny", ["gla"], progress=False, device="cpu")
    config = json.loads((tmp_path / "o" / "gla" / "lpt" / "run" / "train_config.json").read_text())
    assert [s.get("keys") for s in config["synthetic"] if s["kind"] == "mqar"] == [40]
    assert config["loss_average"] == "sequences"  # the preset's loss averaging reaches every stage
    assert asked and set(asked) == {40}
