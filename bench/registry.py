"""Every GPU benchmark case in one place: what it builds and the kernel settings it runs under, as fields.

A case's name is its label in results and in the tables of docs/benchmarks.md; its settings are applied from the
fields (``statex.runtime.configure(**case.settings)``), never read from the name. The names ending in ``@own-ssd``
(statex's own SSD kernels) and ``@wide-values`` (GLA sub-heads up to 256 x 2048) predate today's defaults, which
they became on 2026-12-02; the cases without them keep the settings they were first measured with (Mamba2's SSD on
fla's chunk_gla, GLA sub-heads up to 256 x 512), so that every table keeps meaning what it measured.

    python -m bench.registry            # the cases, one line each
"""
from __future__ import annotations

from dataclasses import dataclass

PARTS = ("peak", "layers", "model", "decode")


@dataclass(frozen=True)
class Case:
    part: str  # peak | layers | model | decode
    name: str
    family: str | None = None  # gla | mamba2 (None: the matmul peak)
    expanded: bool = False  # the StateX shape: GLA's 4 heads merged into 1 (layers; every:6 in a model), Mamba2's
    #                         d_state x4 (layers; every:8 in a model)
    implementation: str = "statex"  # statex | fla (fla's own GatedLinearAttention layer)
    ssd_kernel: str = "fla"  # Mamba2's chunked SSD: fla (chunk_gla) | triton (statex's own)
    chunk_max_value_block: int = 512  # GLA sub-heads of the chunked kernel: up to 256 x this

    @property
    def settings(self) -> dict:
        """The ``statex.runtime.KernelSettings`` fields this case runs with."""
        return {"ssd_kernel": self.ssd_kernel, "chunk_max_value_block": self.chunk_max_value_block}

    def describe(self) -> str:
        shape = f"{self.family or '-'}{' StateX' if self.expanded else ''}"
        return (f"{self.part:7s} {self.name:32s} {shape:14s} {self.implementation:6s} ssd={self.ssd_kernel} "
                f"chunk_max_value_block={self.chunk_max_value_block}")


OWN_SSD_KERNEL, WIDE_SUB_HEADS = dict(ssd_kernel="triton"), dict(chunk_max_value_block=2048)
CASES = [
    Case("peak", "bf16-matmul"),
    Case("layers", "statex-gla", "gla"),
    Case("layers", "fla-gla", "gla", implementation="fla"),
    Case("layers", "statex-gla-statex", "gla", expanded=True),
    Case("layers", "statex-gla-statex@wide-values", "gla", expanded=True, **WIDE_SUB_HEADS),
    Case("layers", "statex-mamba2", "mamba2"),
    Case("layers", "statex-mamba2-statex", "mamba2", expanded=True),
    Case("layers", "statex-mamba2@own-ssd", "mamba2", **OWN_SSD_KERNEL),
    Case("layers", "statex-mamba2-statex@own-ssd", "mamba2", expanded=True, **OWN_SSD_KERNEL),
    Case("model", "gla:original", "gla"),
    Case("model", "gla:statex", "gla", expanded=True),
    Case("model", "gla:statex@wide-values", "gla", expanded=True, **WIDE_SUB_HEADS),
    Case("model", "mamba2:original", "mamba2"),
    Case("model", "mamba2:statex", "mamba2", expanded=True),
    Case("model", "mamba2:original@own-ssd", "mamba2", **OWN_SSD_KERNEL),
    Case("model", "mamba2:statex@own-ssd", "mamba2", expanded=True, **OWN_SSD_KERNEL),
    Case("decode", "gla:original", "gla"),
    Case("decode", "gla:statex", "gla", expanded=True),
    Case("decode", "mamba2:original", "mamba2"),
    Case("decode", "mamba2:statex", "mamba2", expanded=True),
]


def select(parts: list[str] | tuple[str, ...] = PARTS, only: list[str] | None = None) -> list[Case]:
    """The cases of these parts (in the registry's order), only the named ones when ``only`` is given; an unknown
    part or name is a ValueError listing the known ones."""
    unknown_parts = set(parts) - set(PARTS)
    if unknown_parts:
        raise ValueError(f"unknown part(s) {', '.join(sorted(unknown_parts))} (known: {', '.join(PARTS)})")
    known = {case.name for case in CASES}
    unknown = set(only or ()) - known
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return [case for case in CASES if case.part in parts and (not only or case.name in only)]


def find(part: str, name: str) -> Case:
    for case in CASES:
        if case.part == part and case.name == name:
            return case
    raise ValueError(f"no case {name!r} in part {part!r}")


if __name__ == "__main__":
    for case in CASES:
        print(case.describe())
