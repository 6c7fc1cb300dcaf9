"""The project's own format: ``config.json`` (``ModelConfig.to_dict``) + ``model.safetensors`` with the source
library's parameter names. Written to a temporary directory beside the target, then renamed into place."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from statex.errors import StatexError
from statex.files import clean_stale_temporaries, honour_umask, temporary_directory


def tensors_to_save(model, rename=lambda name: name) -> dict:
    """The model's tensors as a weight file holds them: on the CPU, contiguous, a tied lm_head left out
    (safetensors stores each tensor once; loading ties it again), names passed through ``rename``."""
    return {rename(name): tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()
            if not (name == "lm_head.weight" and model.config.tie_embeddings)}


def save_model(model, path: str | Path) -> None:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StatexError(f"{path}: exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = tensors_to_save(model)
    clean_stale_temporaries(path.parent)
    tmp = temporary_directory(path)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        honour_umask(tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, allow_nan=False)
                                         + "\n")
        if path.is_dir():
            # keep whatever else the directory holds (a tokenizer, say); replace our two files atomically
            for name in ("model.safetensors", "config.json"):
                os.replace(tmp / name, path / name)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

