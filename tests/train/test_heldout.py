"""The trainer's held-out measures: the held-out loss and the per-source probes (loss and exact-answer accuracy on
fresh sequences of each synthetic source), checked against the model's own loss, an oracle and a uniform guess."""
import json
import math
from dataclasses import replace

import pytest
import torch

import statex
from statex.compare.parallel import _progress_of
from statex.data.dataset import TrainStream, parse_synthetic
from statex.data.tokenizers import load_tokenizer
from statex.train import resolve_config
from statex.train.distributed import Dist
from statex.train.heldout import _rank_batches, heldout_loss, source_labels, source_probes

SOURCES = [{"kind": "mqar", "weight": 1.0, "seq_len": 32, "num_pairs": [2, 4], "keys": 16},
           {"kind": "mqar", "weight": 0.5, "num_pairs": [4, 8], "keys": 16, "loss_weight": 8.0},
           {"kind": "mqar", "weight": 0.0, "num_pairs": [4, 8]}]


def _stream(seed=0):
    return TrainStream(None, 64, seed, load_tokenizer("ids:64"), parse_synthetic(SOURCES))


def test_source_labels_name_kind_pairs_length_and_loss_weight_uniquely():
    sources = parse_synthetic(SOURCES + [{"kind": "mqar", "weight": 1.0, "seq_len": 32, "num_pairs": [2, 4]}])
    assert source_labels(sources, 64) == ["mqar 2-4 pairs T=32 #1", "mqar 4-8 pairs T=64 x8", "mqar 4-8 pairs T=64",
                                          "mqar 2-4 pairs T=32 #2"]
    assert source_labels(parse_synthetic("passkey:0.1"), 256) == ["passkey T=256"]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("count", [1, 5, 8, 13])
def test_every_rank_runs_the_same_batches_and_together_they_cover_each_sequence_once(world, count):
    batches = [list(_rank_batches(count, 4, Dist(rank=r, world=world))) for r in range(world)]
    assert len({len(b) for b in batches}) == 1  # a sharded model's collectives run alike on every rank
    counted = sorted(i for b in batches for indices, kept in b if kept for i in indices)
    assert counted == list(range(count))


class _Oracle(torch.nn.Module):
    """Logits that put ``margin`` on the next token of a fixed set of sequences (looked up by their ids)."""

    def __init__(self, vocab, margin):
        super().__init__()
        self.vocab, self.margin, self.answers = vocab, margin, {}

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab, dtype=torch.float64)
        for b, row in enumerate(ids):
            labels = self.answers[tuple(row.tolist())]
            for t in range(ids.shape[1] - 1):
                if labels[t + 1] >= 0:
                    logits[b, t, labels[t + 1]] = self.margin
        return logits


def test_probes_score_an_oracle_and_a_uniform_guess_exactly():
    stream, count = _stream(), 6
    oracle = _Oracle(64, margin=5.0)
    probes_seen = []

    def forward(ids):
        probes_seen.append(ids)
        return oracle(ids)

    # the probe sequences, drawn as the probes draw them, to give the oracle its answers
    for index, source in enumerate(s for s in stream.synthetic if s.weight > 0):
        alone = TrainStream(None, 64, 0 + 7_919 * (index + 2), stream.tokenizer, [replace(source, weight=1.0)])
        ids, labels = alone.batch(0, count)
        oracle.answers.update({tuple(i.tolist()): l for i, l in zip(ids, labels)})
    results = source_probes(oracle, forward, stream, count, 64, 0, 4, Dist())
    assert list(results) == ["mqar 2-4 pairs T=32", "mqar 4-8 pairs T=64 x8"]  # weight 0: not probed
    # a margin m on the right token of V: loss log(1 + (V - 1) e^-m), every answer exact
    expected = math.log(1 + 63 * math.exp(-5.0))
    for values in results.values():
        assert values["accuracy"] == 1.0 and values["loss"] == pytest.approx(expected, rel=1e-6)
    first_source = torch.cat(probes_seen[:2])  # 6 sequences in batches of 4 and 2
    answers = sum(int((oracle.answers[tuple(row.tolist())][1:] >= 0).sum()) for row in first_source)
    assert len(first_source) == count and results["mqar 2-4 pairs T=32"]["tokens"] == answers
    uniform = source_probes(oracle, lambda ids: torch.zeros(*ids.shape, 64), stream, count, 64, 0, 4, Dist())
    for values in uniform.values():
        assert values["loss"] == pytest.approx(math.log(64), rel=1e-6)
    assert source_probes(oracle, forward, stream, 0, 64, 0, 4, Dist()) == {}


def test_probes_are_the_same_sequences_each_time_and_not_the_training_ones():
    stream, calls = _stream(seed=5), []
    model = torch.nn.Linear(1, 1)

    def forward(ids):
        calls.append(ids.clone())
        return torch.zeros(*ids.shape, 64)

    source_probes(model, forward, stream, 4, 64, 5, 4, Dist())
    first = list(calls)
    calls.clear()
    source_probes(model, forward, stream, 4, 64, 5, 4, Dist())
    assert all(torch.equal(a, b) for a, b in zip(first, calls)) and len(first) == len(calls) == 2
    trained = set()
    for key in range(0, 400, 4):
        for position in range(key, key + 4):
            trained.add(tuple(stream.example(position, key=key)[0].tolist()))
    assert not any(tuple(row.tolist()) in trained for batch in first for row in batch)
    assert model.training  # left in training mode


def test_heldout_loss_is_the_models_own_token_mean_loss(tmp_path):
    torch.manual_seed(0)
    model = statex.build_model(statex.gla_config(64, 32, 1, num_heads=2), seed=0).double()
    stream = _stream()
    count, batch = 7, 3
    loss = heldout_loss(model, lambda ids: model(ids).logits, stream, count, 64, 0, batch, Dist())
    # without text: synthetic sequences of the run's mixture from a stream of their own, scored by the model
    held = TrainStream(None, 64, 0 + 7_919, stream.tokenizer, stream.synthetic)
    total = tokens = 0.0
    for start in range(0, count, batch):
        ids, labels = held.batch(start, min(batch, count - start))
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += float(model(ids, labels=labels).loss) * n
        tokens += n
    assert loss == pytest.approx(total / tokens, rel=1e-6)
    assert heldout_loss(model, None, stream, 0, 64, 0, batch, Dist()) is None


def test_training_logs_probes_at_each_evaluation(tmp_path):
    config = statex.gla_config(64, 32, 1, num_heads=2)
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps(config.to_dict()))
    common = dict(init=str(tmp_path / "init"), tokenizer="ids:64", synthetic=SOURCES, seq_len=64, batch_size=4,
                  steps=4, lr=3e-3, warmup=1, progress=False, log_every=1, save_every=2, heldout_sequences=4)
    statex.train(resolve_config({}, dict(common, out=str(tmp_path / "run"), probe_sequences=8)))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if "probes" in r]
    assert [r["step"] for r in probes] == [2, 4]
    for row in probes:
        assert set(row["probes"]) == {"mqar 2-4 pairs T=32", "mqar 4-8 pairs T=64 x8"}
        for values in row["probes"].values():
            assert 0 <= values["accuracy"] <= 1 and math.isfinite(values["loss"]) and values["tokens"] > 0
    # the progress line reads the last training record, not a probe
    assert _progress_of("gla/base", tmp_path / "run").startswith("gla/base step 4/4 loss ")
    statex.train(resolve_config({}, dict(common, out=str(tmp_path / "none"), probe_sequences=0)))
    assert '"probes"' not in (tmp_path / "none" / "metrics.jsonl").read_text()
    with pytest.raises(statex.StatexError, match="--probe-sequences"):
        resolve_config({}, dict(common, out=str(tmp_path / "bad"), probe_sequences=-1))
