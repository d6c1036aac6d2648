"""The plain-text table that ``advx bench`` prints and ``benchmarks/`` ends its session with."""

from __future__ import annotations

from collections.abc import Sequence

from .cases import BenchRow, short_name


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(rows: Sequence[BenchRow]) -> str:
    """Aligned plain-text table of the rows (rates, seconds, share of the bf16 peak)."""
    head = ("suite", "model", "backend", "precision", "batch", "device", "img/s", "img-step/s",
            "s/run", "% bf16 peak", "notes")
    lines = [head]
    for r in rows:
        note = r.notes
        if r.fractions:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in r.fractions.items())
            note = f"{shares}; {note}"
        lines.append((
            r.name, "+".join(short_name(m) for m in r.model.split("+")), r.backend, r.precision,
            str(r.batch), r.device, _fmt(r.images_per_s, ",.1f"),
            _fmt(r.image_steps_per_s, ",.1f"), _fmt(r.seconds, ".4g"),
            _fmt(None if r.flop_fraction is None else 100 * r.flop_fraction, ".1f"), note,
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    out = []
    for line in lines:
        cells = [c.rjust(w) if i in (4, 6, 7, 8, 9) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=False))]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    hardware = sorted({f"{r.device}: {r.hardware}" for r in rows})
    return "\n".join([*out, "", *hardware])
