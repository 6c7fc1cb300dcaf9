"""Recall-intensive QA from local JSONL in the Based / "Just read twice" schema.

- SWDE, FDA, SQuAD style: ``{"text": prompt, "value": answer}`` (the text already ends with the key);
- TriviaQA, NQ, DROP style: ``{"context", "question", "answers": [...]}``; prompt = context + ". " + question.
Greedy decoding until a newline, at most 48 new tokens; metric "contains" (does any gold answer occur in the
output, case-insensitive). ``--qa-max-tokens N`` truncates a longer context to a window of N tokens around the
first occurrence of the answer (or its end when the answer does not occur).
"""
from __future__ import annotations

import json
from pathlib import Path

from statex.errors import StatexError
from statex.eval.common import EvalContext, Record, contains_any, first_line, greedy_generate

MAX_NEW_TOKENS = 48


def load_examples(path: str | Path, limit: int | None = None) -> list[tuple[str, str, list[str]]]:
    """(context, key, answers) triples from a JSONL file of either schema."""
    path = Path(path)
    if not path.is_file():
        raise StatexError(f"{path}: recall QA file not found")
    examples = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise StatexError(f"{path}:{number}: not a JSON line") from None
        if "text" in row and "value" in row:
            examples.append((str(row["text"]), "", [str(row["value"])]))
        elif "context" in row and "question" in row and "answers" in row:
            answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
            examples.append((str(row["context"]), ". " + str(row["question"]), [str(a) for a in answers]))
        else:
            raise StatexError(f"{path}:{number}: expected fields text+value or context+question+answers")
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise StatexError(f"{path}: no examples")
    return examples


def build_prompt(tokenizer, context: str, key: str, answers: list[str], max_tokens: int | None) -> list[int]:
    context_ids, key_ids = tokenizer.encode(context), tokenizer.encode(key)
    if max_tokens is None or len(context_ids) + len(key_ids) <= max_tokens:
        return context_ids + key_ids
    keep = max(1, max_tokens - len(key_ids))
    lowered = context.lower()
    positions = [lowered.find(a.lower()) for a in answers if a and lowered.find(a.lower()) >= 0]
    if positions:  # centre the window on the first answer occurrence
        centre = len(tokenizer.encode(context[:min(positions)]))
        start = max(0, min(len(context_ids) - keep, centre - keep // 2))
    else:
        start = len(context_ids) - keep
    return context_ids[start:start + keep] + key_ids


def run(ctx: EvalContext) -> list[Record]:
    files = ctx.options.recall_files or []
    if not files:
        raise StatexError("task recall needs --recall-files a.jsonl[,b.jsonl] (Based/JRT schema, local files)")
    max_tokens = ctx.options.qa_max_tokens
    records = []
    for path in files:
        examples = load_examples(path, limit=ctx.n)
        prompts = [build_prompt(ctx.tokenizer, c, k, a, max_tokens) for c, k, a in examples]
        bar = ctx.bar(len(prompts), f"recall {Path(path).stem}")
        outputs = greedy_generate(ctx, prompts, MAX_NEW_TOKENS, on_done=bar.update)
        bar.close()
        hits = [contains_any(first_line(o), answers) for o, (_, _, answers) in zip(outputs, examples)]
        records.append(Record(ctx.model_name, "recall", f"file={Path(path).stem}", "contains",
                              sum(hits) / len(hits), len(hits), {"file": str(path)}))
    return records
