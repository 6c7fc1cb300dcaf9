"""transformers' dialect on statex models: attention_mask with left padding (a padded row computes what the row
computes alone, in the forward pass, chunked prefill and batched generation, both families, float64), transformers'
generate keywords (repetition_penalty against transformers' own logits processor), from_pretrained."""
import pytest
import torch

import statex


def _model(family):
    if family == "gla":
        config = statex.gla_config(61, 32, 2, num_heads=2, use_short_conv=True)
    else:
        config = statex.mamba2_config(61, 32, 2, d_state=8, headdim=8, ngroups=2)
    model = statex.build_model(config, seed=0).double().eval()
    with torch.no_grad():  # conv biases and non-trivial norms, so that a padded position would show if it leaked
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def _left_padded(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_left_padded_rows_equal_unpadded_rows(family):
    model = _model(family)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 61, (n,), generator=gen).tolist() for n in (37, 20, 5)]
    ids, mask = _left_padded(rows, pad=7)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        unmasked = model(ids).logits
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r]), use_cache=True)
            torch.testing.assert_close(out.logits[i, -len(r):], alone.logits[0], rtol=1e-10, atol=1e-10)
            for a, b in zip(out.state.select(torch.tensor([i])).tensors(), alone.state.tensors()):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert (unmasked[2, -5:] - out.logits[2, -5:]).abs().max() > 1e-3  # without the mask the padding leaks
        # chunked prefill (pieces of 8) and batched generation
        logits, _ = model.prefill(ids, chunk_tokens=8, attention_mask=mask)
        torch.testing.assert_close(logits, out.logits[:, -1], rtol=1e-10, atol=1e-10)
        batch = model.generate(ids, max_new_tokens=6, attention_mask=mask)
        for i, r in enumerate(rows):
            alone = model.generate(torch.tensor([r]), max_new_tokens=6)
            assert batch[i, ids.shape[1]:].tolist() == alone[0, len(r):].tolist()


def test_masks_that_cannot_be_honoured_are_refused():
    model = _model("gla")
    ids = torch.randint(1, 61, (2, 6))
    with pytest.raises(ValueError, match="only left padding"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]))
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(model(ids, attention_mask=right).logits[0, :4], model(ids).logits[0, :4])
    with pytest.raises(ValueError, match="pad prompts on the left"):
        model.generate(ids, max_new_tokens=2, attention_mask=right)


def test_generate_speaks_transformers_keywords():
    from statex.models.generation import hf_generate_kwargs

    model = _model("mamba2")
    model.config.eos_token_id = 5
    ids = torch.randint(1, 61, (2, 7))
    got = hf_generate_kwargs(model.config, ids, {"max_new_tokens": None, "max_length": 20, "do_sample": False,
                                                 "temperature": 0.7, "use_cache": True, "num_beams": 1})
    assert got == {"max_new_tokens": 13, "stop_tokens": [5]}
    got = hf_generate_kwargs(model.config, ids, {"max_new_tokens": 4, "do_sample": True, "eos_token_id": [3, 4]})
    assert got == {"max_new_tokens": 4, "temperature": 1.0, "stop_tokens": [3, 4]}
    assert hf_generate_kwargs(model.config, ids, {"stop_tokens": ()})["stop_tokens"] == ()
    for bad, message in (({"num_beams": 2}, "num_beams=2 is not supported"),
                         ({"typical_p": 0.5}, "unknown argument"),
                         ({"do_sample": True, "temperature": 0.0}, "needs temperature > 0")):
        with pytest.raises(ValueError, match=message):
            model.generate(ids, **bad)
    # min_new_tokens: the stop token that greedy decoding picks first cannot come before 3 new tokens
    with torch.no_grad():
        first = int(model(ids[:1]).logits[0, -1].argmax())
        out = model.generate(ids[:1], max_new_tokens=5, eos_token_id=first, min_new_tokens=3)
    assert first not in out[0, 7:10].tolist()
    plain = model.generate(ids[:1], max_new_tokens=5, eos_token_id=first)
    assert plain.shape[1] == 8 and plain[0, -1] == first  # stopped at once: the EOS by default


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    model = _model("gla")
    ids = torch.randint(1, 61, (2, 9))
    processor = transformers.RepetitionPenaltyLogitsProcessor(3.0)
    expected = ids.clone()
    with torch.no_grad():
        for _ in range(16):  # transformers' rule applied step by step to the model's own logits
            scores = processor(expected, model(expected).logits[:, -1])
            expected = torch.cat([expected, scores.argmax(-1, keepdim=True)], 1)
        got = model.generate(ids, max_new_tokens=16, repetition_penalty=3.0, stop_tokens=())
    assert torch.equal(got, expected)
    assert not torch.equal(model.generate(ids, max_new_tokens=16, stop_tokens=()), expected)


def test_generate_from_a_transformers_tokenizer_batch(tmp_path):
    transformers = pytest.importorskip("transformers")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 200)
    path = statex.train_bpe_tokenizer([corpus], 300, tmp_path / "tok" / "tokenizer.json", show_progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), padding_side="left")
    tok.pad_token = tok.eos_token
    model = statex.build_model(statex.gla_config(300, 32, 2, num_heads=2), seed=0).eval()
    model.save_pretrained(tmp_path / "m")
    model = statex.GLAForCausalLM.from_pretrained(tmp_path / "m", torch_dtype="float32")
    texts = ["the cat", "the cat sat on the"]
    batch = model.generate(**tok(texts, return_tensors="pt", padding=True), do_sample=False, max_new_tokens=5,
                           eos_token_id=None, stop_tokens=())
    for row, text in enumerate(texts):
        alone = model.generate(tok(text, return_tensors="pt")["input_ids"], max_new_tokens=5, stop_tokens=())
        assert batch[row, -5:].tolist() == alone[0, -5:].tolist()
