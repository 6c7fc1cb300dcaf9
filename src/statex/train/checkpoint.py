"""Training checkpoints: ``OUT/checkpoints/step-XXXXXXXX/`` holding ``model/`` (the project format) and
``trainer.pt`` (optimizer, step, data position, RNG states, the resolved config). Each is written to a
temporary directory and renamed, so a checkpoint is either complete or absent; the ``keep`` latest are kept."""
from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from statex.errors import StatexError
from statex.files import clean_stale_temporaries, temporary_directory

# what a trainer.pt must hold to be resumed from (an older or foreign file without them is skipped)
TRAINER_STATE_KEYS = ("step", "data_position", "optimizer", "rng")

PREFIX = "step-"


def checkpoint_dirs(out: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint directory (one of ``checkpoint_dirs``) was written at."""
    return int(path.name[len(PREFIX):])


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: str | Path, step: int, model, trainer_state: dict[str, Any], keep: int) -> Path:
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(root)
    final = root / f"{PREFIX}{step:08d}"
    tmp = temporary_directory(final)
    try:
        model.save_pretrained(tmp / "model")
        torch.save(trainer_state, tmp / "trainer.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_model_config(out: str | Path):
    """The model config of the newest checkpoint whose config.json reads (None without checkpoints)."""
    from statex.io import load_config

    candidates = checkpoint_dirs(out)
    for path in reversed(candidates):
        try:
            return load_config(path / "model")[0]
        except StatexError:
            continue
    if candidates:
        raise StatexError(f"{out}: none of the {len(candidates)} checkpoints has a readable config.json")
    return None


def load_latest_checkpoint(out: str | Path):
    """(model, trainer_state, path) of the newest readable checkpoint; a corrupt one is skipped with a warning.
    Returns None when OUT has no checkpoint."""
    from statex.io import load_model

    candidates = checkpoint_dirs(out)
    for path in reversed(candidates):
        try:
            model = load_model(path / "model", dtype=None)
            state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
            lacking = [key for key in TRAINER_STATE_KEYS if not isinstance(state, dict) or key not in state]
            if lacking:
                raise StatexError(f"trainer.pt lacks {', '.join(lacking)}")
            return model, state, path
        except Exception as exc:  # any unreadable file: fall back to the previous checkpoint
            warnings.warn(f"checkpoint {path} is unreadable ({str(exc).splitlines()[0][:160]}); "
                          "falling back to the previous one", stacklevel=2)
    if candidates:
        raise StatexError(f"{out}: none of the {len(candidates)} checkpoints can be read")
    return None
