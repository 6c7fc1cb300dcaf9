"""Evaluation: scorers, generators, every task end to end, an oracle that must score 100% through the real
pipeline, a random model near chance, reports, the CLI and the lm-eval adapter (offline, local task)."""
import json
from types import SimpleNamespace

import pytest
import torch

import statex
from statex.eval import contains_any, evaluate, fraction_contained, write_report
from statex.eval.tasks import mqar, niah, passkey, recall_qa

BYTES = statex.load_tokenizer("bytes")


class OracleLM(torch.nn.Module):
    """Test-only: predicts the token that followed the most recent earlier occurrence of the longest suffix of
    its input (an ideal induction head). It reads passkeys and MQAR values from its input."""

    def __init__(self, vocab_size=257):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def _predict(self, history: list[int]) -> int:
        t = len(history) - 1
        best, best_len = None, 0
        for s in range(t - 1, -1, -1):
            length = 0
            while length <= s and history[s - length] == history[t - length] and length < 64:
                length += 1
            if length > best_len:
                best, best_len = s, length
        return history[best + 1] if best is not None else 0

    def forward(self, input_ids, state=None, use_cache=False, last_logits_only=False, labels=None):
        history = state if state is not None else [[] for _ in range(input_ids.shape[0])]
        history = [h + row for h, row in zip(history, input_ids.tolist())]
        T = input_ids.shape[1]
        logits = torch.zeros(input_ids.shape[0], T, self.config.vocab_size)
        for b, h in enumerate(history):
            offset = len(h) - T
            for t in range(T - 1 if last_logits_only else 0, T):
                logits[b, t, self._predict(h[:offset + t + 1])] = 1.0
        if last_logits_only:
            logits = logits[:, -1:]
        return SimpleNamespace(logits=logits, state=history)

    def generate(self, input_ids, max_new_tokens=8, prefill_chunk=None, stop_tokens=None):
        rows = input_ids.tolist()
        for _ in range(max_new_tokens):
            rows = [r + [self._predict(r)] for r in rows]
        return torch.tensor(rows)


def tiny_model(seed=0):
    return statex.build_model(statex.gla_config(257, 32, 2, num_heads=2, use_short_conv=True), seed=seed).eval()


def test_scorers():
    assert contains_any("The answer is Paris.", ["paris"]) and not contains_any("London", ["Paris", "Rome"])
    assert contains_any("rome!", ["Paris", "Rome"]) and not contains_any("anything", ["", " "])
    assert fraction_contained("1234567 and 7654321", ["1234567", "1111111"]) == 0.5
    assert passkey.score(" 12345. Remember", "12345") == 1.0 and passkey.score(" 1234", "12345") == 0.0
    predictions = torch.tensor([[0, 5, 0, 7, 0]])
    labels = torch.tensor([[-100, -100, 5, -100, 8]])  # value at 2 predicted at 1 (hit), value at 4 missed
    assert mqar.score(predictions, labels) == (1, 2)


def test_passkey_and_niah_generators():
    a = passkey.generate_examples(BYTES, 1000, 0.5, 3, seed=1)
    assert a == passkey.generate_examples(BYTES, 1000, 0.5, 3, seed=1)
    assert a != passkey.generate_examples(BYTES, 1000, 0.5, 3, seed=2)
    for ids, key in a:
        text = BYTES.decode(ids)
        assert abs(len(ids) - 1000) <= 100 and text.count(key) == 2
        assert abs(text.index(f"The passkey is {key}") / len(text) - 0.5) < 0.1
    for variant, pattern in ((1, r"^\d{7}$"), (3, r"^[0-9a-f-]{36}$")):
        examples = niah.generate_examples(BYTES, 800, 0.25, 2, seed=0, variant=variant)
        for ids, refs in examples:
            import re

            text = BYTES.decode(ids)
            assert re.match(pattern, refs[0]) and refs[0] in text
            assert abs(text.index(refs[0]) / len(text) - 0.25) < 0.1 and abs(len(ids) - 800) <= 100
    multi = niah.generate_examples(BYTES, 1500, 0.5, 1, seed=0, keys=3)[0]
    assert BYTES.decode(multi[0]).count("One of the special magic numbers") == 3
    with pytest.raises(statex.StatexError, match="needs --haystack"):
        niah.generate_examples(BYTES, 800, 0.5, 1, seed=0, variant=2)
    essay = niah.generate_examples(BYTES, 600, 0.5, 1, seed=0, variant=2, haystack="Essays are long. " * 10)
    assert "Essays are long." in BYTES.decode(essay[0][0])
    # the task encodes the haystack once and passes its ids: the same prompts as from the text
    ids = niah.encode_haystack(BYTES, "Essays are long. " * 10)
    assert niah.generate_examples(BYTES, 600, 0.5, 2, seed=0, variant=2, haystack=ids) == \
        niah.generate_examples(BYTES, 600, 0.5, 2, seed=0, variant=2, haystack="Essays are long. " * 10)


def test_niah_needles_go_between_sentences_of_a_text_haystack():
    import re

    text = "Alpha beta gamma. Delta epsilon zeta eta! Theta iota kappa lambda mu? Nu xi omicron. " * 4
    for length in (600, 900):
        for depth in (0.0, 0.3, 0.5, 0.8, 1.0):
            prompt = BYTES.decode(niah.generate_examples(BYTES, length, depth, 1, seed=0, variant=2,
                                                         haystack=text)[0][0])
            hay = prompt[prompt.index("afterwards.\n") + len("afterwards.\n"):prompt.index("\nWhat are all")]
            needle = re.search(r" One of the special magic numbers for \w+ is: \d{7}\.", hay)
            before, after = hay[:needle.start()], hay[needle.end():]
            # RULER's join: sentence, space, needle, space, next sentence; never inside a sentence or a word
            assert before == "" or before.endswith((".", "!", "?")), (depth, before[-20:])
            assert after == "" or after.startswith(" ") and after[1:2] in ("", *"ADNT"), (depth, after[:20])
            assert abs(len(before) / (len(before) + len(after)) - depth) < 0.2
    # a text without sentence ends: the needle still goes at a word start
    words = niah.generate_examples(BYTES, 600, 0.5, 1, seed=0, variant=2, haystack="lorem ipsum dolor " * 40)
    assert re.search(r"(lorem|ipsum|dolor) One of the special magic numbers for \w+ is: \d{7}\. (lorem|ipsum|dolor)",
                     BYTES.decode(words[0][0]))
    # the repeated-sentence haystack keeps its lines whole: the needle sits between two of them
    noise = BYTES.decode(niah.generate_examples(BYTES, 800, 0.5, 1, seed=0, variant=1)[0][0])
    assert re.search(r"again\.\nOne of the special magic numbers for \w+ is: \d{7}\.\nThe grass", noise)


def test_oracle_scores_100_percent_and_random_model_near_chance():
    options = dict(lengths=[300, 600], depths=[0.0, 0.5, 1.0], pairs=[4, 16], mqar_lengths=[128])
    oracle = evaluate({"oracle": OracleLM()}, ["passkey", "mqar"], BYTES, n=3, progress=False, **options)
    assert {r.task for r in oracle} == {"passkey", "mqar"}
    assert all(r.value == 1.0 for r in oracle), [(r.setting, r.value) for r in oracle if r.value < 1]
    random = evaluate({"random": tiny_model()}, ["passkey", "mqar"], BYTES, n=3, progress=False, **options)
    assert max(r.value for r in random if r.task == "passkey") == 0.0
    assert sum(r.value for r in random if r.task == "mqar") / 2 < 0.1  # chance is 1/128


def test_teacher_forced_passkey_separates_learning_from_generation():
    oracle = passkey.teacher_forced(OracleLM(), BYTES, "oracle", [200], n=2, seed=0, batch_size=2, chunk=64)
    assert [(r.task, r.metric, r.params["length"]) for r in oracle] == [("passkey_forced", "token_accuracy", 200)]
    assert oracle[0].value == 1.0  # the answer is read off the needle, piece by piece of 64 tokens
    random = passkey.teacher_forced(tiny_model(), BYTES, "random", [200], n=2, seed=0, batch_size=2)
    assert random[0].value < 0.5
    assert random[0].params["baseline"] == oracle[0].params["baseline"] == passkey.format_baseline(BYTES)


def test_teacher_forced_niah_reads_the_value_off_the_needle():
    oracle = niah.teacher_forced(OracleLM(), BYTES, "oracle", [600], n=3, seed=0, batch_size=2, chunk=64,
                                 variants=(1, 3))
    assert [(r.task, r.metric, r.params["length"]) for r in oracle] == [
        ("niah_single_1_forced", "token_accuracy", 600), ("niah_single_3_forced", "token_accuracy", 600)]
    # " 1234567" in bytes: the induction head may miss the space and first digit (the answer prefix's "is" is
    # followed by ": " in the needle), then reads every later digit off the needle
    assert oracle[0].value >= 6 / 8
    assert oracle[1].value > 0.9  # a 36-character UUID: all but its first two bytes read off the needle
    random = niah.teacher_forced(tiny_model(), BYTES, "random", [600], n=3, seed=0, batch_size=3)
    assert random[0].value < 0.5 and random[0].params["baseline"] == oracle[0].params["baseline"]
    assert oracle[0].params["baseline"] == pytest.approx((1 + 1 / 9 + 6 / 10) / 8, abs=0.02)
    assert oracle[0].params["tokens"] == 3 * (600 + 8)  # the prompt is the length asked, the answer 8 bytes


def test_passkey_format_baseline_is_the_majority_guess_per_answer_position():
    # bytes: " " then five digits, the first never 0; the space is always right, each digit about 1 in 10
    # (the first 1 in 9), so the majority guess scores about (1 + 1/9 + 4/10) / 6
    assert passkey.format_baseline(BYTES) == pytest.approx((1 + 1 / 9 + 4 / 10) / 6, abs=0.02)

    class OneToken:  # a tokenizer that writes every answer as one token: nothing to guess from the format
        def encode(self, text):
            return [int(text)]
    assert passkey.format_baseline(OneToken(), n=500) < 0.01


def test_every_task_end_to_end_on_a_tiny_model(tmp_path):
    (tmp_path / "swde.jsonl").write_text(json.dumps({"text": "Name: Ann. Age: 31. Age:", "value": "31"}) + "\n")
    (tmp_path / "nq.jsonl").write_text(json.dumps({"context": "Paris is in France", "question": "Where is Paris?",
                                                   "answers": ["France"]}) + "\n")
    (tmp_path / "text.txt").write_text("the river flows to the sea. " * 100)
    (tmp_path / "icl.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in
                                                [("good", "pos"), ("bad", "neg"), ("great", "pos"), ("awful", "neg")]))
    records = evaluate({"tiny": tiny_model()}, ["passkey", "niah", "mqar", "recall", "ppl", "icl"], BYTES, n=2,
                       progress=False, lengths=[384], depths=[0.5], pairs=[4], mqar_lengths=[64],
                       recall_files=[str(tmp_path / "swde.jsonl"), str(tmp_path / "nq.jsonl")],
                       ppl_file=str(tmp_path / "text.txt"), icl_file=str(tmp_path / "icl.jsonl"), shots=[0, 2])
    tasks = {r.task for r in records}
    assert tasks == {"passkey", "niah_single_1", "mqar", "recall", "ppl", "icl"}
    for r in records:
        assert r.model == "tiny" and r.n > 0
        if r.metric in ("accuracy", "contains"):
            assert 0.0 <= r.value <= 1.0
    ppl = [r for r in records if r.task == "ppl" and r.metric == "loss"]
    assert len(ppl) >= 3 and all(r.value > 0 for r in ppl)


def test_chunked_scoring_equals_one_pass():
    from statex.eval.common import token_logprobs

    model = tiny_model()
    ids = torch.randint(0, 257, (2, 100))
    one = token_logprobs(model, ids, chunk=1000)
    pieces = token_logprobs(model, ids, chunk=17)
    torch.testing.assert_close(pieces, one, rtol=1e-4, atol=1e-5)
    full = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(one, full, rtol=1e-4, atol=1e-5)


def test_recall_truncation_keeps_the_answer():
    context = "filler " * 200 + "The code is 4242. " + "more " * 200
    ids = recall_qa.build_prompt(BYTES, context, ". What is the code?", ["4242"], max_tokens=120)
    assert len(ids) <= 120 and "4242" in BYTES.decode(ids)


def test_report_files_and_schema(tmp_path):
    options = dict(lengths=[200], depths=[0.0, 1.0], pairs=[4], mqar_lengths=[64])
    records = evaluate({"a": tiny_model(0), "b": tiny_model(1)}, ["passkey", "mqar"], BYTES, n=2, progress=False,
                       **options)
    written = write_report(records, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"model", "task", "setting", "metric", "value", "n"} <= set(data[0])
    table = (tmp_path / "report.md").read_text()
    assert "| a | b |" in table and "mean" in table
    for key in ("passkey_heatmap", "mqar"):
        assert written[key].exists() and written[key].stat().st_size > 1000


def test_eval_cli(tmp_path):
    from statex.cli import main

    tiny_model().save_pretrained(tmp_path / "m1")
    tiny_model(1).save_pretrained(tmp_path / "m2")
    assert main(["eval", str(tmp_path / "m1"), str(tmp_path / "m2"), "--tasks", "passkey,mqar", "--lengths", "256",
                 "--depths", "0,1", "--pairs", "4", "--mqar-lengths", "64", "--n", "2", "--out",
                 str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["model"] for r in data} == {"m1", "m2"}
    with pytest.raises(statex.StatexError, match="unknown task"):
        evaluate({"x": tiny_model()}, ["bogus"], BYTES)
    with pytest.raises(statex.StatexError, match="needs --recall-files"):
        evaluate({"x": tiny_model()}, ["recall"], BYTES, progress=False)


def test_lm_eval_adapter_offline(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    from statex.eval.lm_eval_adapter import StatexLM, run_lm_eval

    rows = [{"question": "Is fire hot?", "choices": ["yes", "no"], "answer": 0},
            {"question": "Is ice hot?", "choices": ["yes", "no"], "answer": 1}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(
        "task: statex_tiny\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'data.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n")
    model = tiny_model()
    records = run_lm_eval(model, "tiny", BYTES, ["statex_tiny"], include_path=str(tmp_path / "tasks"))
    acc = [r for r in records if r.metric == "acc"]
    assert len(acc) == 1 and acc[0].value in (0.0, 0.5, 1.0) and acc[0].n == 2
    # the adapter's log-likelihood is the model's own
    adapter = StatexLM(model=model, tokenizer=BYTES)
    request = SimpleNamespace(args=("Question: Is fire hot?\nAnswer:", " yes"))
    (logprob, _), = adapter.loglikelihood([request])
    context, cont = BYTES.encode(request.args[0]), BYTES.encode(" yes")
    with torch.no_grad():
        logits = model(torch.tensor([context + cont])).logits[0].log_softmax(-1)
    expected = sum(float(logits[len(context) - 1 + i, t]) for i, t in enumerate(cont))
    assert logprob == pytest.approx(expected, rel=1e-5)
    (generated,) = adapter.generate_until([SimpleNamespace(args=("Hello", {"until": ["\n"], "max_gen_toks": 5}))])
    assert isinstance(generated, str) and "\n" not in generated
    (rolling,) = adapter.loglikelihood_rolling([SimpleNamespace(args=("some text here",))])
    assert rolling < 0


def test_perplexity_encodes_only_the_leading_text_it_needs(tmp_path):
    from statex.data.templates import filler_documents
    from statex.eval.tasks.ppl import leading_tokens

    text = "\n\n".join(filler_documents(300, 3))
    (tmp_path / "train.txt").write_text(text)
    bpe = statex.load_tokenizer(statex.train_bpe_tokenizer([tmp_path / "train.txt"], 400, tmp_path / "tok.json",
                                                           show_progress=False))
    for tokenizer in (bpe, BYTES):
        full = tokenizer.encode(text)
        for needed in (10, 3000, len(full) // 2, 10 * len(full)):
            part = leading_tokens(tokenizer, text, needed)
            assert part == full[:len(part)] and len(part) >= min(needed, len(full))
            if needed < len(full) // 3:
                assert len(part) < len(full)  # a prefix, not the whole text
