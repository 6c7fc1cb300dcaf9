"""A training run's directory (``--out``): what may be used as one, and the options a run in it started with."""
from __future__ import annotations

import json
from pathlib import Path

from statex.data.tokenizers import is_builtin
from statex.errors import StatexError
from statex.outputs import check_output
from statex.train.config import TrainConfig

RUN_CONFIG = "train_config.json"
RUN_FILES = (RUN_CONFIG, "checkpoints", "metrics.jsonl", "token-cache", "final", ".statex.lock")


def check_run_directory(config: TrainConfig) -> Path:
    """--out: new, empty, or a run directory of ours (continued with --resume); never one of the inputs."""
    inputs = [config.model, config.init, None if is_builtin(config.tokenizer) else config.tokenizer]
    if config.data is not None:
        inputs += [p for p in str(config.data).split(",") if p.strip()]
    out = check_output(config.out, flag="--out", inputs=inputs, resumable=True)
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith(".")]
        if foreign and not (out / RUN_CONFIG).is_file():
            raise StatexError(f"--out {out}: holds other files ({foreign[0]}, ...) and is not a statex training run; "
                              "choose a new or empty directory")
    return out


def read_run_config(out: Path):
    """The options the run in ``out`` was started with (None when unreadable: a crash before it was written)."""
    try:
        data = json.loads((out / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop the metrics records of steps after the checkpoint ``step`` (a run that died after its last
    save) and any line a crash cut short."""
    from statex.files import write_atomic

    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        found = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(found, int) and found <= step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))
