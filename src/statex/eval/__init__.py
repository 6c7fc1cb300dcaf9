"""Evaluation: passkey, NIAH, MQAR, recall-intensive QA, perplexity by position, in-context learning;
results.json, a markdown table and plots. ``lm_eval_adapter`` connects lm-evaluation-harness (optional)."""
from statex.eval.common import Record, contains_any, fraction_contained
from statex.eval.report import markdown_table, write_report
from statex.eval.runner import check_request, check_tokenizer, evaluate, model_names
from statex.eval.tasks import TASKS
from statex.eval.tasks.mqar_layers import choose_layers, layer_costs

__all__ = ["Record", "TASKS", "check_request", "check_tokenizer", "choose_layers", "contains_any", "evaluate",
           "fraction_contained", "layer_costs", "markdown_table", "model_names", "write_report"]
