"""Data: corpus reading, the token cache, packing, held-out split, deterministic disjoint streams, synthetic
sources, and the BPE tokenizer trainer."""
import json

import numpy as np
import pytest
import torch

import statex
from conftest import write_corpus
from statex.data.cache import build_token_cache, open_token_cache
from statex.data.dataset import TrainStream, load_packed, parse_synthetic
from statex.data.synthetic import (PASSKEY_NEEDLE, MQARSpec, haystack_prompt, mqar_sequence, passkey_sequence)


def test_cache_packs_documents_with_eod_and_is_reused(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    (tmp_path / "d.txt").write_text("a plain text document")
    tok = statex.load_tokenizer("bytes")
    path = build_token_cache(f"{corpus},{tmp_path / 'd.txt'}", tok, tmp_path / "cache", show_progress=False)
    tokens, meta = open_token_cache(path)
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()] + ["a plain text document"]
    expected = [t for d in docs for t in tok.encode(d) + [256]]
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert meta["documents"] == len(docs)
    assert build_token_cache(f"{corpus},{tmp_path / 'd.txt'}", tok, tmp_path / "cache", show_progress=False) == path
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 1  # reused, nothing half-written left


def test_packing_heldout_and_stream_are_deterministic_and_disjoint(tmp_path):
    tok = statex.load_tokenizer("bytes")
    path = build_token_cache(write_corpus(tmp_path / "c.jsonl", n=200), tok, tmp_path / "cache", show_progress=False)
    packed = load_packed(path, seq_len=64, heldout_sequences=5)
    tokens, _ = open_token_cache(path)
    assert torch.equal(packed.sequence(3), torch.from_numpy(tokens[192:256].astype(np.int64)))
    assert packed.train_sequences + 5 == len(tokens) // 64
    stream = TrainStream(packed, 64, seed=1)
    n = packed.train_sequences
    epoch0 = [stream.example(p)[0] for p in range(n)]
    seen = {tuple(t.tolist()) for t in epoch0}
    assert len(seen) == n  # a permutation of the training sequences
    heldout = {tuple(packed.heldout(i).tolist()) for i in range(5)}
    assert not (seen & heldout)
    again = TrainStream(packed, 64, seed=1)
    assert all(torch.equal(again.example(p)[0], epoch0[p]) for p in range(0, n, 7))
    other = TrainStream(packed, 64, seed=2)
    assert any(not torch.equal(other.example(p)[0], epoch0[p]) for p in range(5))
    # 2 processes with batch b read exactly the sequences 1 process with batch 2b reads
    one = stream.batch(10, 8)[0]
    two = torch.cat([stream.batch(10 + r * 4, 4)[0] for r in range(2)])
    assert torch.equal(one, two)


def test_mqar_sequence_layout():
    spec = MQARSpec.for_vocab(64)
    ids, labels = mqar_sequence(torch.Generator().manual_seed(0), 128, 8, spec)
    keys, values = ids[0:16:2], ids[1:16:2]
    assert len(set(keys.tolist())) == 8 and (keys >= 1).all() and (keys < 32).all() and (values >= 32).all()
    labelled = (labels != -100).nonzero().flatten()
    assert len(labelled) == 8 and (labelled >= 16).all()
    binding = dict(zip(keys.tolist(), values.tolist()))
    for pos in labelled.tolist():
        assert ids[pos] == labels[pos] == binding[int(ids[pos - 1])]  # the value follows its query key
    assert (ids[16:][labels[16:] == -100] >= 32).sum() > 0  # filler from the value range
    again = mqar_sequence(torch.Generator().manual_seed(0), 128, 8, spec)
    assert torch.equal(again[0], ids) and torch.equal(again[1], labels)


def test_passkey_needle_at_depth_and_exact_length():
    tok = statex.load_tokenizer("bytes")
    for depth in (0.0, 0.5, 1.0):
        ids, offset = haystack_prompt(tok, 2000, depth, PASSKEY_NEEDLE.format(key="12345"))
        assert abs(len(ids) - 2000) <= 100
        needle = tok.encode(PASSKEY_NEEDLE.format(key="12345"))
        assert ids[offset:offset + len(needle)] == needle
        assert abs(offset / len(ids) - depth) < 0.08
    ids, labels = passkey_sequence(torch.Generator().manual_seed(1), tok, 512)
    assert ids.shape == labels.shape == (512,)
    answer = tok.decode(ids[labels != -100].tolist())
    assert answer.strip().isdigit() and len(answer.strip()) == 5
    assert f"The passkey is {answer.strip()}" in tok.decode(ids.tolist())


def test_niah_training_sequences_are_the_evaluation_prompt_and_its_value():
    from statex.data.dataset import check_synthetic
    from statex.data.synthetic import niah_min_len, niah_sequence
    from statex.eval.tasks import niah

    tok = statex.load_tokenizer("bytes")
    gen = torch.Generator().manual_seed(4)
    for length in (niah_min_len(tok), 600, 1000):
        ids, labels = niah_sequence(gen, tok, length)
        assert ids.shape == labels.shape == (length,)
        answer = tok.decode(ids[labels != -100].tolist())
        assert answer.startswith(" ") and answer.strip().isdigit() and len(answer.strip()) == 7
        text = tok.decode(ids.tolist())
        key = text.split("special magic number for ")[-1].split(" mentioned")[0]
        assert f"One of the special magic numbers for {key} is: {answer.strip()}." in text  # the needle it asks
        assert text.startswith("Some special magic numbers") or text.startswith(tok.decode([tok.eos_token_id]))
        assert labels[:-len(answer)].eq(-100).all()
    # the prompt is the evaluation's: the same template and haystack, with the value appended
    ids, labels = niah_sequence(torch.Generator().manual_seed(0), tok, 700, depth=0.5)
    prompt = ids[labels == -100].tolist()
    key = tok.decode(prompt).split("special magic number for ")[-1].split(" mentioned")[0]
    value = tok.decode(ids[labels != -100].tolist()).strip()
    suffix = niah.NIAH_QUESTION.format(key=key) + niah.NIAH_ANSWER_PREFIX.format(key=key)
    assert prompt == niah.niah_prompt(tok, len(prompt), [(0.5, niah.NIAH_NEEDLE.format(key=key, value=value))],
                                      suffix)
    # too short for the template: refused before any training, with the length it needs
    with pytest.raises(statex.StatexError, match=f"niah sequences need seq_len >= {niah_min_len(tok)}"):
        check_synthetic(parse_synthetic([{"kind": "niah", "seq_len": 128}]), tok, 512)
    stream = TrainStream(None, 512, seed=0, tokenizer=tok, synthetic=parse_synthetic("niah:1,mqar:1"))
    answers = [int((stream.example(p)[1] != -100).sum()) for p in range(40)]
    assert 8 in answers and any(a != 8 for a in answers)  # " 1234567": 8 bytes, beside MQAR's answers


def test_mixture_weights_and_parse_errors(tmp_path):
    tok = statex.load_tokenizer("bytes")
    sources = parse_synthetic("mqar:1,passkey:1")
    stream = TrainStream(None, 256, seed=0, tokenizer=tok, synthetic=sources)
    kinds = [int((stream.example(p)[1] != -100).sum()) for p in range(60)]
    assert any(k == 6 for k in kinds) and any(k != 6 for k in kinds)  # passkeys (" 12345" = 6 bytes) and mqar
    with pytest.raises(statex.StatexError, match="unknown synthetic source"):
        parse_synthetic("ruler:1")
    with pytest.raises(statex.StatexError, match="weight must be a finite number"):
        parse_synthetic("mqar:x")


def test_bad_corpora(tmp_path):
    tok = statex.load_tokenizer("bytes")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(statex.StatexError, match="bad.jsonl:2: not a JSON line"):
        build_token_cache(tmp_path / "bad.jsonl", tok, tmp_path / "cache", show_progress=False)
    (tmp_path / "field.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(statex.StatexError, match="no string field 'text'"):
        build_token_cache(tmp_path / "field.jsonl", tok, tmp_path / "cache", show_progress=False)
    with pytest.raises(statex.StatexError, match="no such data file"):
        build_token_cache(tmp_path / "missing.jsonl", tok, tmp_path / "cache", show_progress=False)
    assert not any(p.name.startswith(".building") for p in (tmp_path / "cache").iterdir())


def test_train_bpe_tokenizer(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", n=300)
    path = statex.train_bpe_tokenizer(corpus, 300, tmp_path / "tok.json", show_progress=False)
    tok = statex.load_tokenizer(path)
    assert tok.vocab_size <= 300 and tok.eos_token_id == 0
    text = "alpha beta river unseen-word 123"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("alpha beta gamma")) < len("alpha beta gamma")


def test_training_and_evaluation_mqar_share_one_split_without_the_eos_token():
    from statex.data import load_tokenizer
    from statex.data.dataset import SyntheticSource, TrainStream
    from statex.eval.tasks.mqar import spec_for

    tokenizer = load_tokenizer("bytes")  # 257 ids, end-of-document 256 at the top
    assert spec_for(tokenizer) == MQARSpec.for_tokenizer(tokenizer) == MQARSpec(1, 128, 128, 256)
    stream = TrainStream(None, 64, 0, tokenizer, [SyntheticSource("mqar", 1.0, (2, 8))], 0.0)
    ids = stream.batch(0, 64)[0]
    assert int(ids.max()) < tokenizer.eos_token_id


def test_an_mqar_key_range_for_training_and_evaluation_alike():
    from statex.data import load_tokenizer
    from statex.data.dataset import TrainStream, check_synthetic
    from statex.eval.tasks import mqar

    tokenizer = load_tokenizer("bytes")
    (source,) = parse_synthetic([{"kind": "mqar", "weight": 1.0, "num_pairs": [4, 16], "keys": 20}])
    assert source.keys == 20
    assert mqar.spec_for(tokenizer, 20) == MQARSpec.for_tokenizer(tokenizer, keys=20) == MQARSpec(1, 21, 21, 41)
    stream = TrainStream(None, 64, 0, tokenizer, [source], 0.0)
    ids, labels = stream.batch(0, 32)
    assert 1 <= int(ids.min()) and int(ids.max()) < 41  # keys, values and filler all inside the two ranges
    values = labels[labels != -100]
    assert values.numel() and bool(((values >= 21) & (values < 41)).all())
    ids, _ = mqar.generate_examples(tokenizer, 64, 8, 1, seed=0, keys=20)[0]
    assert 1 <= int(ids.min()) and int(ids.max()) < 41
    with pytest.raises(statex.StatexError, match=r"16 pairs need 16 distinct keys.*keys: 10"):
        check_synthetic(parse_synthetic([{"kind": "mqar", "num_pairs": [4, 16], "keys": 10}]), tokenizer, 64)
    with pytest.raises(statex.StatexError, match=r"keys 200: needs"):
        check_synthetic(parse_synthetic([{"kind": "mqar", "keys": 200}]), tokenizer, 64)
    with pytest.raises(statex.StatexError, match="keys must be a positive integer"):
        parse_synthetic([{"kind": "mqar", "keys": 0}])
    with pytest.raises(statex.StatexError, match=r"--pairs 32: .*--mqar-keys 20"):
        statex.eval.check_tokenizer(["mqar"], tokenizer, pairs=[32], mqar_lengths=[256], mqar_keys=20)
