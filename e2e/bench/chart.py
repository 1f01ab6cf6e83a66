#!/usr/bin/env python3
"""Draws docs/bench/backup-restore.svg from the benchmarks' CSV rows (`make bench-chart`).

Reads the rows e2e/bench/backup.sh and e2e/bench/restore.sh append (docs/benchmarks.md), keeps the
newest row for each (size, method) (the latest date; among equal dates, the later line), and draws
two panels side by side: backup time and restore time against the database size, one line with
markers per method. Python's standard library only; the same rows always give the same bytes.

    e2e/bench/chart.py [--backup CSV] [--restore CSV] [--out SVG]
"""

import argparse
import csv
import math
import os
import sys
from xml.sax.saxutils import escape

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BENCH = os.path.join(REPO, "docs", "bench")

# Known methods, in legend order: label, colour and marker (indexes into COLOURS and MARKERS, fixed
# so a method looks the same whichever others have rows). Scripts a user would write are dashed,
# what the project ships is solid; a restore's colour is its member count. Methods not listed (other
# levels, DEST=dir) follow, sorted, as they are named.
METHODS = {
    "backup": [
        ("etcdctl-save", "etcdctl snapshot save (to disk)", 0, 0),
        ("save+gzip-1+upload", "save + gzip -1 + upload", 1, 1),
        ("save+pigz-1+upload", "save + pigz -1 -p 2 + upload", 2, 2),
        ("save+zstd-1+upload", "save + zstd -1 -T2 + upload", 3, 3),
        ("sidecar-gzip", "sidecar, gzip", 4, 4),
        ("sidecar-zstd", "sidecar, zstd", 5, 5),
    ],
    "restore": [
        ("manual-3", "by hand, 3 members", 0, 0),
        ("operator-3", "operator, 3 members", 0, 1),
        ("manual-1", "by hand, 1 member", 4, 2),
        ("operator-1", "operator, 1 member", 4, 3),
    ],
}
PRODUCT = ("sidecar-", "operator-")
# Okabe-Ito: told apart with the common colour-vision deficiencies.
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["circle", "square", "triangle", "diamond", "down", "cross"]
SIZE_TICKS = [256, 1024, 2048]

WIDTH, PANEL_W, MARGIN = 872, 436, 14
PLOT_L, PLOT_R, PLOT_T, PLOT_H = 62, 16, 52, 260
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def newest(path):
    """{method: {size: seconds}} from the newest row of each (size, method); {} without the file."""
    if not os.path.exists(path):
        return {}
    best = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f)):
            try:
                size, seconds = int(row["size_mib"]), float(row["seconds"])
            except (KeyError, TypeError, ValueError):
                continue
            key = (size, row["method"])
            rank = (row.get("date") or "", line)
            if key not in best or rank >= best[key][0]:
                best[key] = (rank, seconds)
    series = {}
    for (size, method), (_, seconds) in best.items():
        series.setdefault(method, {})[size] = seconds
    return series


def nice_step(span, ticks=5):
    """A 1, 2 or 5 times a power of ten step giving about `ticks` ticks over `span`."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def num(x):
    """A coordinate or tick value, with no more digits than it needs (so output is stable)."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def marker(kind, x, y, colour):
    r = 4.5
    if kind == "circle":
        return f"<circle cx='{num(x)}' cy='{num(y)}' r='{r}' fill='{colour}'/>"
    if kind == "square":
        return f"<rect x='{num(x - r)}' y='{num(y - r)}' width='{2 * r}' height='{2 * r}' fill='{colour}'/>"
    if kind == "cross":
        return (f"<path d='M{num(x - r)},{num(y - r)}L{num(x + r)},{num(y + r)}M{num(x - r)},{num(y + r)}"
                f"L{num(x + r)},{num(y - r)}' stroke='{colour}' stroke-width='2.5'/>")
    points = {
        "triangle": [(0, -r * 1.2), (r * 1.1, r * 0.8), (-r * 1.1, r * 0.8)],
        "down": [(0, r * 1.2), (r * 1.1, -r * 0.8), (-r * 1.1, -r * 0.8)],
        "diamond": [(0, -r * 1.3), (r * 1.1, 0), (0, r * 1.3), (-r * 1.1, 0)],
    }[kind]
    pts = " ".join(f"{num(x + dx)},{num(y + dy)}" for dx, dy in points)
    return f"<polygon points='{pts}' fill='{colour}'/>"


def ordered(kind, series):
    """(method, label, colour, marker) of every method with rows, known ones first in their order."""
    known = METHODS[kind]
    names = {m for m, *_ in known}
    extra = [(m, m, len(known) + i, len(known) + i) for i, m in enumerate(sorted(set(series) - names))]
    return [(m, label, c, k) for m, label, c, k in known + extra if m in series]


def panel(kind, title, series, x0, source):
    """One panel's SVG elements, its left edge at x0."""
    out = [f"<text x='{num(x0 + PANEL_W / 2)}' y='24' text-anchor='middle' font-size='16' "
           f"font-weight='bold'>{escape(title)}</text>"]
    left, right = x0 + PLOT_L, x0 + PANEL_W - PLOT_R
    top, bottom = PLOT_T, PLOT_T + PLOT_H
    methods = ordered(kind, series)
    sizes = sorted({s for m, *_ in methods for s in series[m]})
    x_max = max(sizes + SIZE_TICKS) * 1.06
    y_top = max([v for m, *_ in methods for v in series[m].values()] + [1.0])
    step = nice_step(y_top, 6)
    y_max = math.ceil(y_top * 1.05 / step) * step

    def px(size):
        return left + (right - left) * size / x_max

    def py(seconds):
        return bottom - (bottom - top) * seconds / y_max

    out.append(f"<rect x='{left}' y='{top}' width='{right - left}' height='{bottom - top}' "
               f"fill='none' stroke='#444'/>")
    ticks, v = [], 0.0
    while v <= y_max + step / 1000:
        ticks.append(v)
        v += step
    for v in ticks:
        y = py(v)
        out.append(f"<line x1='{left}' x2='{right}' y1='{num(y)}' y2='{num(y)}' stroke='#ddd'/>")
        label = f"{v:g}" if step >= 1 else f"{v:.{max(0, -math.floor(math.log10(step)))}f}"
        out.append(f"<text x='{left - 6}' y='{num(y + 4)}' text-anchor='end' font-size='12'>{label}</text>")
    for s in sorted(set(SIZE_TICKS) | set(sizes)):
        x = px(s)
        out.append(f"<line x1='{num(x)}' x2='{num(x)}' y1='{bottom}' y2='{bottom + 5}' stroke='#444'/>")
        out.append(f"<text x='{num(x)}' y='{bottom + 19}' text-anchor='middle' font-size='12'>{s}</text>")
    out.append(f"<text x='{num((left + right) / 2)}' y='{bottom + 40}' text-anchor='middle' "
               f"font-size='13'>database size (MiB)</text>")
    mid = (top + bottom) / 2
    out.append(f"<text x='{x0 + 16}' y='{num(mid)}' text-anchor='middle' font-size='13' "
               f"transform='rotate(-90 {x0 + 16} {num(mid)})'>seconds</text>")
    if not methods:
        out.append(f"<text x='{num((left + right) / 2)}' y='{num(mid)}' text-anchor='middle' "
                   f"font-size='13' fill='#666'>no rows in {escape(source)}</text>")
    legend_y = bottom + 62
    for i, (m, label, c, k) in enumerate(methods):
        colour, shape = COLOURS[c % len(COLOURS)], MARKERS[k % len(MARKERS)]
        dash = "" if m.startswith(PRODUCT) else " stroke-dasharray='6 4'"
        pts = sorted(series[m].items())
        if len(pts) > 1:
            path = " ".join(f"{num(px(s))},{num(py(v))}" for s, v in pts)
            out.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='2'{dash}/>")
        out.extend(marker(shape, px(s), py(v), colour) for s, v in pts)
        ly = legend_y + 18 * i
        out.append(f"<line x1='{left}' x2='{left + 28}' y1='{ly}' y2='{ly}' stroke='{colour}' "
                   f"stroke-width='2'{dash}/>")
        out.append(marker(shape, left + 14, ly, colour))
        out.append(f"<text x='{left + 36}' y='{ly + 4}' font-size='12'>{escape(label)}</text>")
    return out, legend_y + 18 * max(len(methods), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backup", default=os.path.join(BENCH, "backup.csv"))
    ap.add_argument("--restore", default=os.path.join(BENCH, "restore.csv"))
    ap.add_argument("--out", default=os.path.join(BENCH, "backup-restore.svg"))
    args = ap.parse_args()
    backup, restore = newest(args.backup), newest(args.restore)
    if not backup and not restore:
        print(f"chart.py: no rows in {args.backup} or {args.restore}; run the benchmarks first "
              "(docs/benchmarks.md)", file=sys.stderr)
        return 1
    left, h1 = panel("backup", "Backup: time to a stored archive", backup, MARGIN,
                     os.path.relpath(args.backup, REPO))
    right, h2 = panel("restore", "Restore: time to a serving cluster", restore, MARGIN + PANEL_W,
                      os.path.relpath(args.restore, REPO))
    height = int(max(h1, h2) + 12)
    width = WIDTH + 2 * MARGIN
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' {FONT} fill='#222'>",
           f"<title>{escape('Backup and restore time against database size (docs/benchmarks.md)')}</title>",
           f"<rect width='{width}' height='{height}' fill='white'/>"]
    svg += left + right
    svg.append("</svg>")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="\n") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {os.path.relpath(os.path.abspath(args.out), REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
