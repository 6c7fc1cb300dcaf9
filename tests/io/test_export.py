"""statex export: models of uniform layers written in transformers' Mamba2 and fla's GLA formats, read back by
those libraries (transformers here; fla through statex's reader of fla checkpoints) with the same logits; models
they cannot describe refused with one line, nothing written."""
import json

import pytest
import torch

import statex
from statex.cli import main
from statex.io.export import export_config, export_model


def _mamba2(tmp_path, tie=True, ngroups=2):
    model = statex.build_model(statex.mamba2_config(67, 32, 2, d_state=8, headdim=8, ngroups=ngroups,
                                                    tie_embeddings=tie), seed=0)
    with torch.no_grad():  # move the parameters the init sets to constants
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".D"):
                p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path / "statex-mamba2"
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text("{}")
    return model, path


@pytest.mark.parametrize("tie,ngroups", [(True, 2), (False, 1)])
def test_transformers_loads_the_export_with_the_same_logits(tmp_path, tie, ngroups):
    transformers = pytest.importorskip("transformers")
    model, path = _mamba2(tmp_path, tie, ngroups)
    export_model(path, tmp_path / "hf", "transformers")
    hf, info = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    ids = torch.randint(0, 67, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
        again = statex.load_model(tmp_path / "hf")
        assert again.source_format == "hf-mamba2"
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


def test_fla_export_reads_back_through_the_fla_reader(tmp_path):
    model = statex.build_model(statex.gla_config(67, 32, 2, num_heads=2, use_short_conv=True), seed=0)
    model.save_pretrained(tmp_path / "gla")
    export_model(tmp_path / "gla", tmp_path / "fla", "fla")
    config = json.loads((tmp_path / "fla" / "config.json").read_text())
    assert config["model_type"] == "gla" and config["architectures"] == ["GLAForCausalLM"]
    back = statex.load_model(tmp_path / "fla")
    assert back.source_format == "fla-gla"
    ids = torch.randint(0, 67, (2, 21))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_what_cannot_be_described_is_refused(tmp_path, capsys):
    model, path = _mamba2(tmp_path)
    expanded = statex.expand(model, "1", mode="preserve", factor=2)
    with pytest.raises(statex.StatexError, match=r"layer\(s\) 1 differ from layer 0 in d_state"):
        export_config(expanded.config, "transformers")
    with pytest.raises(statex.StatexError, match="takes gla models"):
        export_config(model.config, "fla")
    expanded.save_pretrained(tmp_path / "expanded")
    assert main(["export", str(tmp_path / "expanded"), str(tmp_path / "out"), "--to", "transformers"]) == 2
    assert "differ from layer 0" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["export", str(path), str(tmp_path / "taken"), "--to", "transformers"]) == 2
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert main(["export", str(path), str(tmp_path / "new"), "--to", "transformers"]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["config.json", "model.safetensors",
                                                                      "tokenizer.json"]
