"""The statex lm-eval adapter against lm-eval's own Hugging Face backend (``--model hf``) on the same weights: a
transformers Mamba2 checkpoint with a BOS tokenizer, local tasks (a context ending in whitespace, a rolling
log-likelihood over several windows, generation), batch size 2. Per item, log-likelihoods within 1e-4; metrics
and generated strings equal."""
import json

import pytest

transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

TEXTS = ["the cat sat on the mat and the dog sat on the log",
         "yes no maybe so, one two three four five six seven eight nine ten",
         "a quick brown fox jumps over the lazy dog while the cat sleeps"]


def _tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    from tokenizers import decoders

    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(TEXTS * 20, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    directory = tmp_path_factory.mktemp("hf-mamba2")
    vocab = _tokenizer(directory)
    config = transformers.Mamba2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, state_size=8,
                                       head_dim=16, num_heads=4, n_groups=1, expand=2, conv_kernel=4,
                                       chunk_size=16, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                       pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.Mamba2ForCausalLM(config)
    with torch.no_grad():  # larger weights than the init's, so that the scores differ from item to item
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    rows = [{"q": t.split()[0] + " " + t.split()[1], "choices": ["yes", "no", "cat"], "answer": i % 3, "text": t}
            for i, t in enumerate(TEXTS)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'data.jsonl'}\ntest_split: test\n"
    (root / "mc.yaml").write_text(
        "task: sx_mc_space\n" + common + "output_type: multiple_choice\ntarget_delimiter: \"\"\n"
        "doc_to_text: \"Answer: \"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n")
    (root / "rolling.yaml").write_text(
        "task: sx_rolling\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
        "doc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n")
    (root / "gen.yaml").write_text(
        "task: sx_gen\n" + common + "output_type: generate_until\ndoc_to_text: \"{{q}}\"\n"
        "doc_to_target: \"{{text}}\"\ngeneration_kwargs:\n  until: [\"dog\"]\n  max_gen_toks: 4\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    return root


def _run(model, model_args, tasks_dir):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["sx_mc_space", "sx_rolling", "sx_gen"],
                                   task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                                   batch_size=2, device="cpu")


def test_adapter_matches_the_hf_backend(checkpoint, tasks, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import statex.eval.lm_eval_adapter  # noqa: F401  (registers "statex")

    args = f"pretrained={checkpoint},max_length=12,dtype=float32"
    theirs = _run("hf", args, tasks)
    ours = _run("statex", args, tasks)
    for task in ("sx_mc_space", "sx_rolling", "sx_gen"):
        a, b = theirs["samples"][task], ours["samples"][task]
        assert len(a) == len(b) == len(TEXTS)
        for x, y in zip(a, b):
            for rx, ry in zip(x["resps"], y["resps"]):
                if task == "sx_gen":
                    assert rx == ry
                elif task == "sx_rolling":
                    assert abs(rx[0] - ry[0]) < 1e-4, (rx, ry)
                else:
                    assert abs(rx[0][0] - ry[0][0]) < 1e-4 and rx[0][1] == ry[0][1], (rx, ry)
        for key, value in theirs["results"][task].items():
            if isinstance(value, float) and not key.endswith("stderr,none"):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, key)


def test_adapter_arguments(checkpoint):
    import statex
    from statex.eval.lm_eval_adapter import StatexLM

    with pytest.raises(statex.StatexError, match="unknown argument"):
        StatexLM(pretrained=str(checkpoint), parallelize=True)
    with pytest.raises(statex.StatexError, match="dtype"):
        StatexLM(pretrained=str(checkpoint), dtype="int8")
    lm = StatexLM(pretrained=str(checkpoint), dtype="bfloat16")  # the model's own tokenizer, the CPU by default
    assert lm.prefix_token_id == 1 and lm.eot_token_id == 2 and str(lm.device) in ("cpu", "cuda")
    import torch

    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.tok_encode("the cat")[0] == 1 and lm.tok_encode("<s> the cat").count(1) == 1
    assert max(len(lm.tok_encode(t)) for t in TEXTS) > 12  # the rolling task above spans several windows


def test_statex_eval_logs_lm_eval_samples(checkpoint, tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from statex.cli import main

    out = tmp_path / "report"
    assert main(["eval", str(checkpoint), "--lm-eval", "sx_mc_space", "--lm-eval-include", str(tasks),
                 "--lm-eval-log-samples", "--batch-size", "2", "--device", "cpu", "--out", str(out)]) == 0
    (log,) = (out / "samples").iterdir()
    items = [json.loads(line) for line in log.read_text().splitlines()]
    assert log.name.endswith("_sx_mc_space.jsonl") and len(items) == len(TEXTS)
    assert all(len(item["resps"]) == 3 for item in items)  # one log-likelihood per choice
