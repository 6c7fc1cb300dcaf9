"""In-context learning: k-shot classification from a local JSONL of {"text", "label"} for several k.

Prompt: k demonstrations "Input: {text}\nLabel: {label}\n\n" (drawn by seed from the other rows, labels
balanced as far as the data allows) then "Input: {text}\nLabel:"; the prediction is the label whose tokens
(" {label}") have the highest total log-likelihood. Chance = 1 / number of labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from statex.errors import StatexError
from statex.eval.common import EvalContext, Record, stable_seed

TEMPLATE = "Input: {text}\nLabel:"
DEFAULT_SHOTS = (0, 4, 16)


def load_rows(path) -> list[tuple[str, str]]:
    rows = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append((str(row["text"]), str(row["label"])))
            except (ValueError, KeyError, TypeError):
                raise StatexError(f"{path}:{number}: expected a JSON object with text and label") from None
    if len(rows) < 2:
        raise StatexError(f"{path}: needs at least 2 rows")
    return rows


def build_prompt(rows, query: int, shots: int, gen: torch.Generator) -> str:
    others = [i for i in range(len(rows)) if i != query]
    order = torch.randperm(len(others), generator=gen).tolist()
    demos = [rows[others[i]] for i in order[:shots]]
    parts = [TEMPLATE.format(text=t) + f" {label}\n\n" for t, label in demos]
    return "".join(parts) + TEMPLATE.format(text=rows[query][0])


@torch.no_grad()
def label_scores(model, tokenizer, prompt: str, labels: list[str], device) -> list[float]:
    context = tokenizer.encode(prompt)
    scores = []
    for label in labels:
        continuation = tokenizer.encode(" " + label)
        ids = torch.tensor([context + continuation], device=device)
        logits = model(ids).logits[0, len(context) - 1:-1].float().log_softmax(-1)
        scores.append(float(logits.gather(-1, torch.tensor(continuation, device=device)[:, None]).sum()))
    return scores


def run(ctx: EvalContext) -> list[Record]:
    path = ctx.options.icl_file
    if not path:
        raise StatexError("task icl needs --icl-file FILE (JSONL of text and label)")
    rows = load_rows(path)
    labels = sorted({label for _, label in rows})
    shots_grid = ctx.options.shots or DEFAULT_SHOTS
    device = next(ctx.model.parameters()).device
    records = []
    queries = list(range(min(ctx.n, len(rows))))
    bar = ctx.bar(len(shots_grid) * len(queries), "icl")
    for shots in shots_grid:
        gen = torch.Generator().manual_seed(stable_seed(ctx.seed, shots, "icl"))
        correct = 0
        for query in queries:
            prompt = build_prompt(rows, query, min(shots, len(rows) - 1), gen)
            scores = label_scores(ctx.model, ctx.tokenizer, prompt, labels, device)
            correct += labels[max(range(len(labels)), key=scores.__getitem__)] == rows[query][1]
            bar.update(1)
        records.append(Record(ctx.model_name, "icl", f"file={Path(path).stem} shots={shots}", "accuracy",
                              correct / len(queries), len(queries), {"shots": shots, "chance": 1 / len(labels)}))
    bar.close()
    return records
