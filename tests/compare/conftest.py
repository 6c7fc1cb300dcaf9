import json
from pathlib import Path

import pytest

from statex.data.templates import filler_documents

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "compare" / "tiny.yaml"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A stand-in for `statex demo corpus`: template text in its layout (train/, heldout/)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    (root / "heldout").mkdir()
    (root / "train" / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                                        for d in filler_documents(600, 0)))
    (root / "heldout" / "heldout.txt").write_text("\n\n".join(filler_documents(200, 1)))
    (root / "heldout" / "haystack.txt").write_text(" ".join(filler_documents(100, 2)))
    return root
