"""Training data that teaches recall: MQAR mixtures of several (length, pairs) settings in length-bucketed batches,
per-source loss weights, and state passing between micro-batches (exact: the carried state is the state of one long
sequence)."""
import json
import math

import pytest
import torch

import statex
from fast_path import requires_cuda
from statex import runtime
from statex.data.dataset import SyntheticSource, TrainStream, check_synthetic, parse_synthetic
from statex.data.tokenizers import load_tokenizer
from statex.train import resolve_config
from statex.train.loss import weighted_loss

ZOOLOGY = [  # zoology's figure-2 training mixture: sequences per setting as weights
    {"kind": "mqar", "weight": 100, "seq_len": 64, "num_pairs": [4, 4]},
    {"kind": "mqar", "weight": 20, "seq_len": 128, "num_pairs": [8, 8]},
    {"kind": "mqar", "weight": 20, "seq_len": 256, "num_pairs": [16, 16]},
    {"kind": "mqar", "weight": 20, "seq_len": 256, "num_pairs": [32, 32]},
    {"kind": "mqar", "weight": 20, "seq_len": 256, "num_pairs": [64, 64]},
]


def test_ids_tokenizer_serves_synthetic_tasks_only():
    tok = load_tokenizer("ids:8192")
    assert tok.vocab_size == 8192 and tok.eos_token_id is None and tok.fingerprint == "ids-8192"
    with pytest.raises(statex.StatexError, match="has no text"):
        tok.encode("hello")
    for bad in ("ids:", "ids:x", "ids:1"):
        with pytest.raises(statex.StatexError):
            load_tokenizer(bad)


def test_mixture_batches_share_one_length_in_the_mixture_proportions():
    tok = load_tokenizer("ids:8192")
    stream = TrainStream(None, 256, seed=3, tokenizer=tok, synthetic=parse_synthetic(ZOOLOGY))
    assert stream.lengths == [64, 128, 256]
    steps = 3000
    seen = {64: 0, 128: 0, 256: 0}
    for step in range(steps):
        seen[stream.lengths[stream.group(step * 8)]] += 1
    expected = {64: 100 / 180, 128: 20 / 180, 256: 60 / 180}
    for length, count in seen.items():  # binomial: 4 standard deviations
        p = expected[length]
        assert abs(count / steps - p) < 4 * (p * (1 - p) / steps) ** 0.5, (length, count)
    # within a batch of length 256 the three pair counts appear in equal shares, each as specified
    key = next(k for k in range(0, 800, 8) if stream.lengths[stream.group(k)] == 256)
    ids, labels, weights = stream.weighted_batch(key, 90, key=key)
    assert ids.shape == (90, 256) and torch.equal(weights, torch.ones(90))
    pairs = [int((row != -100).sum()) for row in labels]
    assert set(pairs) == {16, 32, 64} and min(pairs.count(p) for p in (16, 32, 64)) > 15
    # every micro-batch and process of a step draws the step's length: the key decides, not the start
    a = stream.weighted_batch(key + 1000, 4, key=key)[0]
    assert a.shape[1] == 256
    weighted = TrainStream(None, 64, 0, tok, parse_synthetic([{"kind": "mqar", "loss_weight": 3.0},
                                                               {"kind": "mqar", "seq_len": 32}]))
    for key in range(0, 80, 8):
        ids, _, w = weighted.weighted_batch(key, 4)
        assert torch.equal(w, torch.full((4,), 3.0 if ids.shape[1] == 64 else 1.0))


def test_mixture_is_deterministic_and_one_length_streams_unchanged():
    tok = load_tokenizer("ids:8192")
    sources = parse_synthetic(ZOOLOGY)
    one, two = (TrainStream(None, 256, seed=5, tokenizer=tok, synthetic=sources) for _ in range(2))
    for key in (0, 64, 640):
        x, y = one.batch(key, 8), two.batch(key, 8)
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    # a stream of one length draws exactly what it drew before lengths could be mixed: group draws are skipped
    plain = [SyntheticSource("mqar", 1.0, (2, 8))]
    stream = TrainStream(None, 64, 0, tok, plain)
    gen = torch.Generator().manual_seed((0 * 2_654_435_761 + 7) % (2**63))
    torch.rand((), generator=gen, dtype=torch.float64)  # the source draw
    pairs = int(torch.randint(2, 9, (1,), generator=gen))
    assert int((stream.example(7)[1] != -100).sum()) == pairs


def test_source_fields_are_checked():
    with pytest.raises(statex.StatexError, match="seq_len must be an integer"):
        parse_synthetic([{"kind": "mqar", "seq_len": 0}])
    with pytest.raises(statex.StatexError, match="loss_weight must be a finite number"):
        parse_synthetic([{"kind": "mqar", "loss_weight": -1}])
    with pytest.raises(statex.StatexError, match="loss_weight must be a finite number"):
        parse_synthetic([{"kind": "mqar", "loss_weight": float("nan")}])
    tok = load_tokenizer("ids:64")  # 31 keys
    with pytest.raises(statex.StatexError, match="up to 32 pairs need 32 distinct keys"):
        check_synthetic(parse_synthetic([{"kind": "mqar", "seq_len": 128, "num_pairs": [4, 64]}]), tok, 16)
    with pytest.raises(statex.StatexError, match="need seq_len >= 64"):
        check_synthetic(parse_synthetic([{"kind": "passkey", "seq_len": 32}]), load_tokenizer("bytes"), 256)


def test_loss_weights_scale_each_sources_tokens_against_a_float64_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 10, 17, dtype=torch.float64)
    labels = torch.randint(0, 17, (3, 10))
    labels[1, :7] = -100
    labels[2, :] = -100  # no labels: counts for nothing in either average
    weights = torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64)
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mask = labels[:, 1:] != -100
    per_token = [nll[i][mask[i]] for i in range(3)]
    tokens = sum(weights[i] * per_token[i].sum() for i in range(2)) / sum(weights[i] * len(per_token[i])
                                                                        for i in range(2))
    sequences = sum(weights[i] * per_token[i].mean() for i in range(2)) / weights[:2].sum()
    torch.testing.assert_close(weighted_loss(logits, labels, weights, "tokens"), tokens)
    torch.testing.assert_close(weighted_loss(logits, labels, weights, "sequences"), sequences)


def test_text_beside_weighted_mqar_trains_with_the_weights(tmp_path):
    from conftest import write_corpus

    write_corpus(tmp_path / "corpus.jsonl", n=80)
    config = statex.gla_config(257, 32, 1, num_heads=2)
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps(config.to_dict()))
    synthetic = [{"kind": "mqar", "weight": 1.0, "num_pairs": [2, 4], "keys": 32, "loss_weight": 8.0,
                  "seq_len": 32}]
    run = resolve_config({}, dict(init=str(tmp_path / "init"), data=str(tmp_path / "corpus.jsonl"), seq_len=64,
                                  batch_size=4, steps=6, lr=3e-3, warmup=1, out=str(tmp_path / "run"),
                                  progress=False, log_every=1, synthetic=synthetic, text_loss_weight=0.5,
                                  cache_dir=str(tmp_path / "cache"), heldout_sequences=2))
    summary = statex.train(run)
    assert summary["steps"] == 6
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tokens = [r["tokens"] for r in rows if "tokens" in r]
    steps = [b - a for a, b in zip([0] + tokens, tokens)]
    assert set(steps) <= {4 * 32, 4 * 64} and len(set(steps)) == 2  # both lengths trained, counted as read


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_carried_state_is_the_state_of_one_long_sequence(family):
    """The training forward (grad enabled, chunked path, lengths not a multiple of the chunk) from a carried state
    equals the second half of one long sequence, in float64; no gradient reaches the first half."""
    if family == "gla":
        config = statex.gla_config(61, 32, 2, num_heads=2, use_short_conv=True)
    else:
        config = statex.mamba2_config(61, 32, 2, d_state=8, headdim=8)
    model = statex.build_model(config, seed=0).double().train()
    ids = torch.randint(0, 61, (2, 77))
    whole = model(ids, use_cache=True)
    first = model(ids[:, :45], use_cache=True)
    carried = first.state.map(torch.Tensor.detach)
    second = model(ids[:, 45:], state=carried, use_cache=True)
    torch.testing.assert_close(second.logits, whole.logits[:, 45:], rtol=1e-10, atol=1e-10)
    for a, b in zip(second.state.tensors(), whole.state.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    second.logits.sum().backward()
    assert all(t.grad is None for t in carried.tensors())


def _state_run(tmp_path, name, **overrides):
    config = statex.mamba2_config(257, 32, 2, d_state=8, headdim=8)
    (tmp_path / "init").mkdir(exist_ok=True)
    (tmp_path / "init" / "config.json").write_text(json.dumps(config.to_dict()))
    values = dict(init=str(tmp_path / "init"), synthetic=[{"kind": "mqar", "num_pairs": [2, 6], "keys": 64}],
                  seq_len=48, batch_size=3, steps=10, lr=3e-3, warmup=1, save_every=3, log_every=1,
                  out=str(tmp_path / name), progress=False, heldout_sequences=0, state_passing=0.9)
    values.update(overrides)
    return resolve_config({}, values)


def test_state_passing_changes_training_and_resumes_bit_identically(tmp_path):
    from statex.train.state_passing import StatePassing

    passing = StatePassing(0.9, 0)
    draws = [passing.draw(p, 0) for p in range(2000)]
    assert abs(sum(draws) / 2000 - 0.9) < 0.03 and draws == [passing.draw(p, 0) for p in range(2000)]
    statex.train(_state_run(tmp_path, "straight"))
    statex.train(_state_run(tmp_path, "pieces", stop_at_step=5))  # the carried state is saved with step 3's
    statex.train(_state_run(tmp_path, "pieces", resume=True))     # checkpoint... and step 5's
    statex.train(_state_run(tmp_path, "off", state_passing=0.0))
    load = lambda name: statex.load_model(tmp_path / name / "final").state_dict()  # noqa: E731
    straight, pieces, off = load("straight"), load("pieces"), load("off")
    assert all(torch.equal(straight[k], pieces[k]) for k in straight)
    assert not all(torch.equal(straight[k], off[k]) for k in straight)
    losses = lambda name: [json.loads(x).get("loss") for x in (tmp_path / name / "metrics.jsonl").read_text()  # noqa
                           .splitlines()]
    assert losses("straight") == losses("pieces")
    assert losses("straight")[0] == pytest.approx(losses("off")[0], rel=1e-6)  # step 1 has nothing to carry


def test_state_passing_is_validated():
    with pytest.raises(statex.StatexError, match="--state-passing must be a probability"):
        resolve_config({}, dict(init="x", synthetic="mqar:1", state_passing=1.5))
    with pytest.raises(statex.StatexError, match="--text-loss-weight"):
        resolve_config({}, dict(init="x", synthetic="mqar:1", text_loss_weight=-1.0))


@requires_cuda
def test_cuda_weighted_mixture_with_state_passing_trains_alike_on_both_paths(tmp_path):
    """statex.train on CUDA in bf16 with two MQAR lengths, a per-source loss weight and state passing: the fast
    kernels' loss curve follows the torch path's."""
    config = statex.gla_config(vocab_size=300, d_model=128, n_layer=3, num_heads=4, use_short_conv=True)
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps(config.to_dict()))
    synthetic = [{"kind": "mqar", "num_pairs": [2, 8], "keys": 64, "seq_len": 96, "loss_weight": 4.0},
                 {"kind": "mqar", "num_pairs": [8, 16], "keys": 64, "seq_len": 192}]
    losses = {}
    for name in ("fla", "torch"):
        run = resolve_config({}, dict(init=str(tmp_path / "init"), synthetic=synthetic, seq_len=192, batch_size=8,
                                      steps=12, lr=3e-3, warmup=2, log_every=1, out=str(tmp_path / name),
                                      progress=False, heldout_sequences=0, state_passing=0.9, precision="bf16",
                                      device="cuda", autotune="off", cache_dir=str(tmp_path / "cache")))
        with runtime.use(backend=name):
            statex.train(run)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["fla"]) == 12 and all(map(math.isfinite, losses["fla"]))
    assert max(abs(a - b) / b for a, b in zip(losses["fla"], losses["torch"])) < 3e-2, losses
