"""The study's plots from its results.json (as `statex compare` draws them): per family, MQAR accuracy against pairs
at each length (capacity) and mean accuracy past the base's capacity against the recurrent state (state).

    python experiments/capacity/plot.py [RESULTS_JSON] [OUT_DIR]
"""
import json
import sys
from pathlib import Path

from statex.compare.references import reference_summary, state_plot
from statex.compare.report import capacity_plot

HERE = Path(__file__).parent
REFERENCES = ["scratch-2S", "scratch-4S"]  # spec.yaml's from-scratch references of each family
THRESHOLD = 0.9  # spec.yaml's verdict.capacity_threshold


def main(results: Path = HERE / "results.json", out: Path = HERE / "plots") -> None:
    records = json.loads(Path(results).read_text())
    out.mkdir(parents=True, exist_ok=True)
    for family in dict.fromkeys(r["family"] for r in records):
        print(capacity_plot(records, family, out))
        print(state_plot(reference_summary(records, family, REFERENCES, THRESHOLD), out))


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:3]))
