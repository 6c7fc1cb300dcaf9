"""The demo: the --quick pipeline end to end (schema, files) and the verdict rule."""
import json

import statex
from statex.demo import default_settings, filler_documents, run_demo, verdicts


def test_quick_demo_end_to_end(tmp_path):
    summary = run_demo(tmp_path / "demo", seed=0, quick=True, progress=False)
    data = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {"family", "variant", "task", "setting", "metric", "value"} <= set(data[0])
    families = {r["family"] for r in data}
    assert families == {"gla", "mamba2"}
    variants = {(r["family"], r["variant"]) for r in data}
    assert {("gla", v) for v in ("base", "lpt", "statex-reinit", "statex-inherit")} <= variants
    assert {("mamba2", v) for v in ("base", "lpt", "statex-reinit", "statex-preserve")} <= variants
    assert {r["task"] for r in data} >= {"mqar", "passkey", "heldout_loss"}
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "reproduced" in report and (tmp_path / "demo" / "mqar_accuracy.png").exists()
    assert len(summary["verdicts"]) == 4
    # the StateX variants really carry the expanded state
    state = {(r["family"], r["variant"]): r["value"] for r in data if r["task"] == "state"}
    assert state[("gla", "statex-reinit")] > state[("gla", "lpt")]
    assert state[("mamba2", "statex-preserve")] > state[("mamba2", "lpt")]
    expanded = statex.load_model(tmp_path / "demo" / "mamba2" / "statex-preserve" / "final")
    assert [s.d_state for s in expanded.config.layers] == [8, 32, 8]


def test_verdict_rule():
    def rec(variant, task, value):
        return {"family": "gla", "variant": variant, "task": task, "value": value}

    records = [rec("lpt", "mqar", 0.5), rec("lpt", "passkey", 0.5), rec("lpt", "heldout_loss", 1.0),
               rec("statex-a", "mqar", 0.7), rec("statex-a", "passkey", 0.5), rec("statex-d", "mqar", 0.51),
               rec("statex-d", "passkey", 0.5), rec("statex-d", "heldout_loss", 1.0), rec("statex-a", "heldout_loss", 1.02),
               rec("statex-b", "mqar", 0.9), rec("statex-b", "passkey", 0.9), rec("statex-b", "heldout_loss", 1.2),
               rec("statex-c", "mqar", 0.4), rec("statex-c", "passkey", 0.5), rec("statex-c", "heldout_loss", 1.0)]
    found = {v["variant"]: v["reproduced"] for v in verdicts(records)}
    assert found == {"statex-a": True, "statex-b": False, "statex-c": False, "statex-d": False}


def test_filler_is_deterministic_and_settings_are_sane():
    assert filler_documents(3, 1) == filler_documents(3, 1) != filler_documents(3, 2)
    settings = default_settings()
    assert settings.post_seq_len == 4 * settings.base_seq_len
    for fam in settings.families:
        assert fam.expand_layers and len(fam.modes) == 2


def test_one_family_in_process(tmp_path, capsys):
    # jobs=1 runs in this process (the path a 1-core machine takes); --families restricts the records
    summary = run_demo(tmp_path / "demo", seed=1, quick=True, families=["mamba2"], progress=False, jobs=1)
    assert {r["family"] for r in summary["records"]} == {"mamba2"}
    assert "[mamba2] evaluating" in capsys.readouterr().out
    assert not (tmp_path / "demo" / "gla").exists()


def test_ablation_reuses_the_pretrained_base(tmp_path):
    from statex.demo import apply_overrides

    run_demo(tmp_path / "first", seed=0, quick=True, families=["gla"], progress=False, jobs=1)
    settings = apply_overrides(default_settings(quick=True), modes=["inherit"], heads=2, post_steps=5)
    summary = run_demo(tmp_path / "ablation", seed=0, quick=True, families=["gla"], progress=False, jobs=1,
                       settings=settings, base_from=tmp_path / "first")
    assert not (tmp_path / "ablation" / "gla" / "base").exists()  # no pretraining
    variants = {r["variant"] for r in summary["records"]}
    assert variants == {"base", "lpt", "statex-inherit"}
    expanded = statex.load_model(tmp_path / "ablation" / "gla" / "statex-inherit" / "final")
    assert [s.num_heads for s in expanded.config.layers] == [4, 2, 4, 2]
    assert "pretrained bases reused" in (tmp_path / "ablation" / "report.md").read_text()
