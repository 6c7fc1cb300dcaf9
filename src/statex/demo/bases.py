"""The demo's pretrained miniature bases: how they are made (``statex demo pretrain``), where the shipped ones
live, and the record written beside each (``recipe.json``: the exact recipe, seed, tokens, wall time, machine
and the base's MQAR accuracy per cell, its capacity curve).

StateX is a post-training method: its users start from a competent pretrained model. The demo therefore ships
bases that recall well where their state suffices and lose accuracy as the number of key-value pairs outgrows
the state, and spends its own budget only on post-training.
"""
from __future__ import annotations

import datetime
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from statex.data.templates import write_corpus
from statex.demo.settings import BaseRecipe, default_recipes
from statex.demo.training import train_run
from statex.errors import StatexError
from statex.files import remove_path, replace_directory, temporary_directory
from statex.models.init import initialise

SHIPPED_DIR = Path(__file__).parent / "bases"
RECORD = "recipe.json"


def shipped_base(family: str) -> Path:
    return SHIPPED_DIR / family


def read_record(base: Path) -> dict[str, Any]:
    """The ``recipe.json`` beside a base's weights."""
    try:
        return json.loads((Path(base) / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise StatexError(f"{base}: no readable {RECORD} ({exc})") from None


def find_base(directory: Path, family: str) -> Path:
    """A family's base in a directory written by ``statex demo pretrain`` (DIR/<family>/) or by a demo run with
    ``--pretrain`` (DIR/bases/<family>/)."""
    for candidate in (Path(directory) / family, Path(directory) / "bases" / family):
        if (candidate / "config.json").is_file():
            return candidate
    raise StatexError(f"{directory}: no {family} base (expected {family}/config.json or bases/{family}/config.json)")


def build_initial_model(recipe: BaseRecipe, vocab_size: int):
    """The freshly initialised base of ``recipe`` (``initialise`` with its init departures)."""
    from statex.config import gla_config, mamba2_config

    builder = gla_config if recipe.family == "gla" else mamba2_config
    return initialise(builder(vocab_size, **recipe.model), recipe.init, recipe.seed)


def capacity_curve(model, tokenizer, recipe: BaseRecipe, progress: bool = False) -> dict[str, float]:
    """MQAR accuracy per (length, pairs) cell of the recipe's evaluation grid."""
    from statex.eval import evaluate

    records = evaluate({"base": model}, ["mqar"], tokenizer, seed=recipe.seed + 1, n=recipe.eval_n, batch_size=64,
                       progress=progress, mqar_lengths=list(recipe.eval_lengths), pairs=list(recipe.eval_pairs))
    return {r.setting: round(r.value, 4) for r in records}


def pretrain_base(recipe: BaseRecipe, out: Path, work: Path, progress: bool = True,
                  command: str | None = None) -> Path:
    """Pretrain one base by ``recipe`` and write ``out`` (config.json, model.safetensors, recipe.json), whole or
    not at all. ``work`` holds the corpus, token cache and checkpoints."""
    from statex.data import load_tokenizer
    from statex.io import load_model
    from statex.summary import describe_model

    tokenizer = load_tokenizer("bytes")
    work.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(work / "data", recipe.corpus_documents, recipe.corpus_seed)
    init = work / "init"
    build_initial_model(recipe, tokenizer.vocab_size).save_pretrained(init)
    if (work / "run").exists():
        shutil.rmtree(work / "run")
    started = time.time()
    summary = train_run(init, work / "run", corpus, work / "token-cache", recipe.seq_len, recipe.batch, recipe.steps,
                        recipe.lr, tuple(recipe.pairs), recipe.mix, recipe.seed, progress)
    wall = time.time() - started
    model = load_model(work / "run" / "final")
    record = {
        "recipe": recipe.to_dict(),
        "command": command or "statex demo pretrain",
        "tokens": recipe.steps * recipe.batch * recipe.seq_len,
        "wall_time_s": round(wall, 1),
        "final_loss": round(summary["final_loss"], 5),
        "heldout_loss": None if summary["heldout_loss"] is None else round(summary["heldout_loss"], 5),
        "mqar_accuracy": capacity_curve(model, tokenizer, recipe, progress),
        "params": model.num_parameters(),
        "state_elements": describe_model(model)["total_state_elements"],
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "date": datetime.date.today().isoformat(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_directory(out)
    try:
        model.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        replace_directory(tmp, out)
    finally:
        remove_path(tmp)
    return out


def pretrain_bases(out: Path, families: list[str] | None = None, progress: bool = True, jobs: int | None = None,
                   command: str | None = None, recipes: dict[str, BaseRecipe] | None = None) -> dict[str, Path]:
    """``statex demo pretrain``: every family's base into ``out/<family>/``, side by side (one process and one
    thread per family when there are enough cores). ``recipes``: default ``default_recipes()``."""
    from statex.compare.parallel import run_tasks

    recipes = recipes or default_recipes()
    chosen = [f for f in recipes if not families or f in families]
    tasks = {family: (_pretrain_task, (recipes[family], Path(out) / family, Path(out) / ".work" / family, command))
             for family in chosen}
    watch = {family: Path(out) / ".work" / family / "run" for family in chosen}
    run_tasks(tasks, jobs=jobs, progress=progress, log_dir=Path(out) / ".work", watch=watch)
    shutil.rmtree(Path(out) / ".work", ignore_errors=True)
    return {family: Path(out) / family for family in chosen}


def _pretrain_task(recipe: BaseRecipe, out: Path, work: Path, command: str | None) -> str:
    pretrain_base(recipe, out, work, progress=False, command=command)
    return str(out)
