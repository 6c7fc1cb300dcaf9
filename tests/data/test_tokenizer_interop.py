"""Tokenizers statex writes load in transformers with their EOS and the same ids; files already there are kept."""
import json

import pytest

import statex

SAMPLES = ["Hello, world!", "  two  spaces\nnewline\ttab", "unicode: ünïcödé 漢字 🙂", "\x00nul", "",
           "<|endoftext|> inside"]


def test_statex_tokenizers_load_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(SAMPLES) * 50 + " the quick brown fox jumps over the lazy dog" * 50)
    path = statex.train_bpe_tokenizer([corpus], 400, tmp_path / "tok" / "tokenizer.json", show_progress=False)
    config = json.loads((path.parent / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["tokenizer_class"] == "PreTrainedTokenizerFast"
    theirs = transformers.AutoTokenizer.from_pretrained(str(path.parent))
    ours = statex.load_tokenizer(path)
    assert theirs.eos_token_id == ours.eos_token_id == 0 and ours.bos_token_id is None
    for text in SAMPLES:
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text), text
        assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))


def test_existing_config_files_are_kept(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text to learn from " * 100)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text('{"mine": true}')
    statex.train_bpe_tokenizer([corpus], 300, tmp_path / "tok" / "tokenizer.json", show_progress=False)
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text()) == {"mine": True}
    assert json.loads((tmp_path / "tok" / "special_tokens_map.json").read_text()) == {"eos_token": "<|endoftext|>"}
