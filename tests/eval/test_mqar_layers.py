"""mqar_layers: the ablations against a block-by-block float64 reference for GLA and Mamba2, and an oracle whose
recall lives in one known layer, through the real task (so a reset that changed nothing would fail)."""
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

import statex
from statex import runtime
from statex.eval import evaluate
from statex.eval.common import token_logprobs
from statex.errors import StatexError
from statex.eval.tasks import mqar, mqar_layers
from statex.eval.tasks.mqar_layers import choose_layers, costs_from_results, layer_costs
from statex.models.lm import RecurrentState

from conftest import randomize_, tiny_gla_config, tiny_mamba2_config
from fast_path import requires_cuda


def reference_predictions(model, ids, boundary, keep):
    """Block by block: the pairs through every layer, then the queries through each layer from its own state
    after the pairs where ``keep(j)``, else from the empty state."""
    batch = ids.shape[0]
    x_pairs, x_queries = model.embed_tokens(ids[:, :boundary]), model.embed_tokens(ids[:, boundary:])
    for j, block in enumerate(model.blocks):
        x_pairs, state = block(x_pairs, None, None)
        if not keep(j):
            state = block.empty_state(batch, model.device, model.dtype)
        x_queries, _ = block(x_queries, state, None)
    return model.lm_head(model.final_norm(x_queries)).argmax(-1)


def ablation_rules(layers):
    """(mode, layer) -> which layers keep their state after the pairs, as ``reference_predictions`` takes it."""
    rules = {("intact", None): lambda j: True, ("all", None): lambda j: False}
    for i in range(layers):
        rules[("reset", i)] = lambda j, i=i: j != i
        rules[("only", i)] = lambda j, i=i: j == i
    return rules


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_every_ablation_matches_the_block_by_block_reference(family):
    config = (tiny_gla_config(n_layer=3, vocab_size=128) if family == "gla"
              else tiny_mamba2_config(n_layer=3, vocab_size=128))
    model = randomize_(statex.build_model(config, dtype=torch.float64)).eval()
    tokenizer = statex.load_tokenizer("ids:128")
    examples = mqar.generate_examples(tokenizer, 96, 8, 4, seed=3)
    ids = torch.stack([e[0] for e in examples])
    boundary = 16
    with torch.no_grad():
        found = mqar_layers.query_predictions(model, ids, boundary, chunk=32)  # pieces of 32: the state carried
        rules = ablation_rules(3)
        assert set(found) == set(rules)
        for key, keep in rules.items():
            assert torch.equal(found[key], reference_predictions(model, ids, boundary, keep)), key
        # intact is the ordinary single pass; an emptied state changes what the queries predict
        assert torch.equal(found[("intact", None)], token_logprobs(model, ids, 2048, want="argmax")[:, boundary:])
        assert not torch.equal(found[("all", None)], found[("intact", None)])


@dataclass
class HistoryState:
    history: torch.Tensor  # [B, tokens seen] (an empty second dimension in the layers that keep nothing)


class OneLayerRecallLM(torch.nn.Module):
    """Test-only: three "layers", of which only ``memory_layer`` keeps the tokens it has seen; the model predicts
    the token that followed the last earlier occurrence of the current token in that memory or the current input
    (an induction head), so it recalls MQAR's values exactly when that layer's memory of the pairs survives."""

    def __init__(self, vocab_size=128, layers=3, memory_layer=1):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.layers, self.memory_layer = layers, memory_layer
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def empty_state(self, batch):
        return RecurrentState([HistoryState(torch.zeros(batch, 0, dtype=torch.long)) for _ in range(self.layers)])

    def forward(self, input_ids, state=None, use_cache=False, last_logits_only=False, labels=None):
        state = state if state is not None else self.empty_state(input_ids.shape[0])
        seen = torch.cat([state.layers[self.memory_layer].history, input_ids], 1)
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        offset = seen.shape[1] - input_ids.shape[1]
        for b in range(input_ids.shape[0]):
            row = seen[b].tolist()
            for t in range(input_ids.shape[1]):
                now = offset + t
                earlier = [s for s in range(now) if row[s] == row[now]]
                logits[b, t, row[earlier[-1] + 1] if earlier else 0] = 1.0
        layers = [HistoryState(seen if j == self.memory_layer else layer.history)
                  for j, layer in enumerate(state.layers)]
        return SimpleNamespace(logits=logits, state=RecurrentState(layers))


def test_the_layer_that_holds_the_pairs_is_found():
    tokenizer = statex.load_tokenizer("ids:128")
    options = dict(mqar_lengths=[64], pairs=[4, 8], n=6, batch_size=3, progress=False)
    records = evaluate({"oracle": OneLayerRecallLM()}, ["mqar_layers", "mqar"], tokenizer, **options)
    plain = {r.params["pairs"]: r.value for r in records if r.task == "mqar"}
    layers = {(r.params["pairs"], r.params["mode"], r.params["layer"]): r.value
              for r in records if r.task == "mqar_layers"}
    for pairs in (4, 8):
        assert plain[pairs] == layers[(pairs, "intact", None)] == 1.0
        assert layers[(pairs, "reset", 1)] == layers[(pairs, "all", None)] == 0.0
        assert layers[(pairs, "reset", 0)] == layers[(pairs, "reset", 2)] == 1.0
        assert layers[(pairs, "only", 1)] == 1.0 and layers[(pairs, "only", 0)] == layers[(pairs, "only", 2)] == 0.0
    assert all(r.n == 6 for r in records)
    assert {r.setting for r in records if r.task == "mqar_layers" and r.params["pairs"] == 4} == {
        "length=64 pairs=4 mode=intact", "length=64 pairs=4 mode=all",
        *(f"length=64 pairs=4 mode={m} layer={i}" for m in ("reset", "only") for i in range(3))}


def _row(mode, value, length=64, pairs=8, layer=None):
    return {"task": "mqar_layers", "value": value,
            "params": {"length": length, "pairs": pairs, "mode": mode, "layer": layer}}


def test_costs_are_the_accuracy_lost_per_layer_averaged_over_cells():
    records = [_row("intact", 0.9), _row("reset", 0.2, layer=0), _row("reset", 0.85, layer=1),
               _row("reset", 0.5, layer=2), _row("only", 0.6, layer=0), _row("all", 0.01),
               _row("intact", 0.6, pairs=32), _row("reset", 0.4, pairs=32, layer=0),
               _row("reset", 0.6, pairs=32, layer=1), _row("reset", 0.1, pairs=32, layer=2),
               {"task": "mqar", "value": 1.0, "params": {"length": 64, "pairs": 8}}]
    costs = layer_costs(records)
    assert costs == pytest.approx({0: (0.7 + 0.2) / 2, 1: (0.05 + 0.0) / 2, 2: (0.4 + 0.5) / 2})
    assert choose_layers(costs, 1) == [0]  # 0.45 each: the tie goes to the lower layer
    assert choose_layers({0: 0.1, 1: 0.3, 2: 0.05, 3: 0.2}, 2) == [1, 3]
    with pytest.raises(StatexError, match="mqar_layers measured 3"):
        choose_layers(costs, 4)


def test_the_oracle_s_recalling_layer_is_the_one_chosen(tmp_path):
    """The layer choice of StateX's ``recall:K`` on an oracle whose layer 1 alone holds the pairs, from its records
    and from a results.json of several models."""
    import json

    from statex.eval.report import write_report

    tokenizer = statex.load_tokenizer("ids:128")
    records = evaluate({"oracle": OneLayerRecallLM(), "other": OneLayerRecallLM(memory_layer=2)}, ["mqar_layers"],
                       tokenizer, mqar_lengths=[64], pairs=[4, 8], n=6, batch_size=3, progress=False)
    oracle = [r for r in records if r.model == "oracle"]
    assert layer_costs(oracle) == layer_costs([r.to_dict() for r in oracle]) == {0: 0.0, 1: 1.0, 2: 0.0}
    assert choose_layers(layer_costs(oracle), 1) == [1] and choose_layers(layer_costs(oracle), 2) == [0, 1]
    results = write_report(records, tmp_path / "out", plots=False)["results"]
    assert costs_from_results(results, "other") == {0: 0.0, 1: 0.0, 2: 1.0}
    with pytest.raises(StatexError, match="of 2 models \\(oracle, other\\): name one"):
        costs_from_results(results)
    with pytest.raises(StatexError, match="no mqar_layers records of model 'third'"):
        costs_from_results(results, "third")
    (tmp_path / "mqar.json").write_text(json.dumps([{"model": "m", "task": "mqar", "value": 1.0, "params": {}}]))
    with pytest.raises(StatexError, match="no mqar_layers records"):
        costs_from_results(tmp_path / "mqar.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StatexError, match="not a readable statex eval results.json"):
        costs_from_results(tmp_path / "bad.json")


def test_requests_are_checked_like_mqar():
    from statex.errors import StatexError

    tokenizer = statex.load_tokenizer("ids:128")
    with pytest.raises(StatexError, match="no cell fits"):
        evaluate({"oracle": OneLayerRecallLM()}, ["mqar_layers"], tokenizer, mqar_lengths=[16], pairs=[8],
                 progress=False)
    with pytest.raises(StatexError, match="distinct keys"):
        evaluate({"oracle": OneLayerRecallLM()}, ["mqar_layers"], tokenizer, mqar_lengths=[512], pairs=[100],
                 progress=False)


@requires_cuda
@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_the_fast_kernels_carry_the_ablated_states(family):
    """On CUDA the states after the pairs come from, and go back into, the fast kernels (a bf16 model, as a
    comparison evaluates one): every ablation agrees with the block-by-block reference on the same kernels."""
    config = (tiny_gla_config(n_layer=3, vocab_size=512, d_model=128, num_heads=2) if family == "gla"
              else tiny_mamba2_config(n_layer=3, vocab_size=512, d_model=128, d_state=32, headdim=32))
    model = randomize_(statex.build_model(config, dtype=torch.bfloat16)).cuda().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # decisive logits: bf16 rounding then flips no argmax between two orders
    tokenizer = statex.load_tokenizer("ids:512")
    ids = torch.stack([e[0] for e in mqar.generate_examples(tokenizer, 256, 16, 8, seed=5)]).cuda()
    boundary = 32
    with torch.no_grad(), runtime.use(backend="fla"):
        found = mqar_layers.query_predictions(model, ids, boundary, chunk=96)
        rules = ablation_rules(3)
        assert set(found) == set(rules)
        for key, keep in rules.items():
            agree = (found[key] == reference_predictions(model, ids, boundary, keep)).float().mean().item()
            assert agree >= 0.98, (key, agree)
