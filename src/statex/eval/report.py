"""results.json, a side-by-side markdown table and PNG plots from evaluation records."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

from statex.eval.common import Record
from statex.files import write_atomic
from statex.strict_json import dumps_strict


def summary_rows(records: Iterable[Record]) -> list[Record]:
    """Per (model, task, metric) means over settings, for grid tasks (passkey, niah, mqar)."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        if r.task in ("passkey", "mqar") or r.task.startswith("niah"):
            groups[(r.model, r.task, r.metric)].append(r)
    return [Record(m, t, "mean", metric, sum(r.value for r in rs) / len(rs), sum(r.n for r in rs))
            for (m, t, metric), rs in groups.items() if len(rs) > 1]


def markdown_table(records: list[Record]) -> str:
    models = list(dict.fromkeys(r.model for r in records))
    cells: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in records + summary_rows(records):
        cells[(r.task, r.setting, r.metric)][r.model] = r.value
    lines = ["| task | setting | metric | " + " | ".join(models) + " |",
             "|---|---|---|" + "---|" * len(models)]
    for (task, setting, metric), values in cells.items():
        row = [f"{values[m]:.4f}" if m in values else "" for m in models]
        lines.append(f"| {task} | {setting} | {metric} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_report(records: list[Record], out: str | Path, plots: bool = True) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"results": out / "results.json", "report": out / "report.md"}
    write_atomic(written["results"], dumps_strict([r.to_dict() for r in records], indent=1) + "\n")
    write_atomic(written["report"], "# Evaluation results\n\n" + markdown_table(records))
    if plots:
        written.update(make_plots(records, out))
    return written


def make_plots(records: list[Record], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    models = list(dict.fromkeys(r.model for r in records))
    heat_tasks = sorted({r.task for r in records if r.task == "passkey" or r.task.startswith("niah")})
    for task in heat_tasks:
        fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.4), squeeze=False)
        labelled = False  # the depth axis is named once, on the first panel drawn: beside others it overlaps them
        for ax, model in zip(axes[0], models):
            rows = [r for r in records if r.task == task and r.model == model]
            if not rows:
                ax.set_visible(False)
                continue
            lengths = sorted({r.params["length"] for r in rows})
            depths = sorted({r.params["depth"] for r in rows})
            grid = [[next((r.value for r in rows if r.params["length"] == L and r.params["depth"] == d), float("nan"))
                     for L in lengths] for d in depths]
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
            ax.set_xticks(range(len(lengths)), [str(L) for L in lengths], rotation=45)
            ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths] if not labelled else [])
            ax.set_xlabel("context length (tokens)")
            if not labelled:
                ax.set_ylabel("needle depth")
                labelled = True
            ax.set_title(f"{model}", fontsize=9)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
        fig.suptitle(task)
        written[f"{task}_heatmap"] = _save(fig, out / f"{task}_heatmap.png")
    mqar = [r for r in records if r.task == "mqar"]
    if mqar:  # one panel per length, one colour per model (the same in every panel)
        lengths = sorted({r.params["length"] for r in mqar})
        fig, axes = plt.subplots(1, len(lengths), figsize=(3.2 * len(lengths) + 1, 3.4), squeeze=False,
                                 sharey=True)
        colours = {model: f"C{i % 10}" for i, model in enumerate(models)}
        for ax, length in zip(axes[0], lengths):
            for model in models:
                rows = sorted((r for r in mqar if r.model == model and r.params["length"] == length),
                              key=lambda r: r.params["pairs"])
                if rows:
                    ax.plot([r.params["pairs"] for r in rows], [r.value for r in rows], marker="o",
                            color=colours[model], label=model)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("key-value pairs")
            ax.set_title(f"T = {length}", fontsize=9)
            ax.set_ylim(0, 1.02)
        axes[0][0].set_ylabel("accuracy")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle("MQAR")
        written["mqar"] = _save(fig, out / "mqar_accuracy.png")
    ppl = [r for r in records if r.task == "ppl" and "start" in r.params]
    if ppl:
        fig, ax = plt.subplots(figsize=(6, 4))
        for model in models:
            rows = sorted((r for r in ppl if r.model == model), key=lambda r: r.params["start"])
            ax.plot([(r.params["start"] + r.params["end"]) / 2 for r in rows], [r.value for r in rows], marker="o",
                    label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position (bucket centre)")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
        ax.set_title("loss by position")
        written["ppl"] = _save(fig, out / "loss_by_position.png")
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
