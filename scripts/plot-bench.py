#!/usr/bin/env python3
"""p99 end-to-end latency against offered rate, from chat-bench fanout runs.

Usage:
    scripts/plot-bench.py [-o docs/bench-latency.svg] [--title TEXT] LABEL=FILE[,FILE..] ...

Each FILE is chat-bench output (for example target/bench/<stamp>.txt from
scripts/bench.sh); its `RESULT {json}` lines with "scenario": "fanout" give
one point per step (the files of one LABEL are merged into one series,
a rate measured twice keeps the first file's point): x = offered rate (messages/s), y = p99 latency (ms),
log-log. A filled marker is a step with lost = 0 and duplicated = 0, a
hollow one a step where deliveries were still missing after the drain wait
(above saturation that is usually backlog, not loss) or duplicated. Labels
starting with "experiment" are drawn dashed. Only the standard library: the
SVG is written by hand.
"""

import argparse
import html
import json
import math
import sys

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
W, H = 960, 480
LEFT, RIGHT, TOP, BOTTOM = 78, 300, 48, 62


def read_points(path):
    points = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("RESULT "):
                continue
            r = json.loads(line[len("RESULT "):])
            if r.get("scenario") != "fanout":
                continue
            lat = r.get("latency_us") or {}
            if not lat.get("count"):
                continue
            points.append(
                {
                    "rate": float(r["rate"]),
                    "p99_ms": lat["p99"] / 1000.0,
                    "p50_ms": lat["p50"] / 1000.0,
                    "clean": r.get("lost", 0) == 0 and r.get("duplicated", 0) == 0,
                    "delivered_per_s": r.get("delivered_per_s"),
                }
            )
    points.sort(key=lambda p: p["rate"])
    return points


def decades(lo, hi):
    a = math.floor(math.log10(lo))
    b = math.ceil(math.log10(hi))
    return a, b


def ticks(lo_exp, hi_exp):
    out = []
    for e in range(lo_exp, hi_exp + 1):
        for m in (1, 2, 5):
            v = m * 10**e
            if 10**lo_exp <= v <= 10**hi_exp:
                out.append(v)
    return out


def fmt(v):
    if v >= 1000 and v % 1000 == 0:
        return f"{int(v // 1000)}k"
    if v >= 1:
        return f"{v:g}"
    return f"{v:g}"


def dash(label):
    """Series whose label starts with "experiment" are drawn dashed."""
    return ' stroke-dasharray="5,3"' if label.lower().startswith("experiment") else ""


def render(series, title, target_ms):
    all_pts = [p for _, pts in series for p in pts]
    if not all_pts:
        sys.exit("no fanout RESULT lines with latency samples in the given files")
    xlo, xhi = decades(min(p["rate"] for p in all_pts), max(p["rate"] for p in all_pts))
    ys = [p["p99_ms"] for p in all_pts] + [target_ms]
    ylo, yhi = decades(max(min(ys), 0.1), max(ys))
    if xhi == xlo:
        xhi += 1
    if yhi == ylo:
        yhi += 1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(v):
        return LEFT + (math.log10(v) - xlo) / (xhi - xlo) * pw

    def y(v):
        return TOP + ph - (math.log10(max(v, 10**ylo)) - ylo) / (yhi - ylo) * ph

    o = []
    o.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">'
    )
    o.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    o.append(
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{html.escape(title)}</text>'
    )
    # Grid and ticks.
    for v in ticks(xlo, xhi):
        major = math.log10(v).is_integer()
        o.append(
            f'<line x1="{x(v):.1f}" y1="{TOP}" x2="{x(v):.1f}" y2="{TOP + ph}" '
            f'stroke="{"#ccc" if major else "#eee"}"/>'
        )
        o.append(
            f'<text x="{x(v):.1f}" y="{TOP + ph + 16}" text-anchor="middle">{fmt(v)}</text>'
        )
    for v in ticks(ylo, yhi):
        major = math.log10(v).is_integer()
        o.append(
            f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{LEFT + pw}" y2="{y(v):.1f}" '
            f'stroke="{"#ccc" if major else "#eee"}"/>'
        )
        o.append(
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>'
        )
    o.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>'
    )
    o.append(
        f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">'
        "offered rate (messages/s, log scale)</text>"
    )
    o.append(
        f'<text transform="translate(20,{TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
        "p99 end-to-end latency (ms, log scale)</text>"
    )
    # Target line.
    o.append(
        f'<line x1="{LEFT}" y1="{y(target_ms):.1f}" x2="{LEFT + pw}" y2="{y(target_ms):.1f}" '
        'stroke="#555" stroke-dasharray="6,4"/>'
    )
    o.append(
        f'<text x="{LEFT + pw - 4}" y="{y(target_ms) - 5:.1f}" text-anchor="end" fill="#555">'
        f"target p99 {target_ms:g} ms</text>"
    )
    # Series.
    for i, (label, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            path = " ".join(
                f'{"M" if j == 0 else "L"}{x(p["rate"]):.1f},{y(p["p99_ms"]):.1f}'
                for j, p in enumerate(pts)
            )
            o.append(
                f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"{dash(label)}/>'
            )
        for p in pts:
            fill = color if p["clean"] else "white"
            tip = (
                f'{label}: {p["rate"]:g}/s offered, p99 {p["p99_ms"]:.1f} ms, '
                f'p50 {p["p50_ms"]:.1f} ms{"" if p["clean"] else ", loss or duplicates"}'
            )
            o.append(
                f'<circle cx="{x(p["rate"]):.1f}" cy="{y(p["p99_ms"]):.1f}" r="4.5" '
                f'fill="{fill}" stroke="{color}" stroke-width="2"><title>{html.escape(tip)}</title></circle>'
            )
        ly = TOP + 10 + i * 22
        lx = LEFT + pw + 14
        o.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{color}" '
            f'stroke-width="2"{dash(label)}/>'
        )
        o.append(f'<circle cx="{lx + 11}" cy="{ly}" r="4" fill="{color}"/>')
        o.append(f'<text x="{lx + 28}" y="{ly + 4}">{html.escape(label)}</text>')
    ny = TOP + 10 + len(series) * 22 + 8
    o.append(
        f'<text x="{LEFT + pw + 14}" y="{ny}" fill="#555">filled: no loss, no duplicates</text>'
    )
    o.append(
        f'<text x="{LEFT + pw + 14}" y="{ny + 16}" fill="#555">hollow: lost &gt; 0 after the drain wait</text>'
    )
    o.append(
        f'<text x="{LEFT + pw + 14}" y="{ny + 32}" fill="#555">(backlog above saturation) or duplicates</text>'
    )
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("series", nargs="+", metavar="LABEL=FILE[,FILE..]")
    ap.add_argument("-o", "--out", default="docs/bench-latency.svg")
    ap.add_argument("--title", default="chat-bench fanout: p99 latency against offered rate")
    ap.add_argument("--target-ms", type=float, default=20.0)
    a = ap.parse_args()
    series = []
    for s in a.series:
        label, sep, paths = s.partition("=")
        if not sep:
            sys.exit(f"expected LABEL=FILE[,FILE..], got {s!r}")
        points = {}
        for path in paths.split(","):
            for p in read_points(path):
                points.setdefault(p["rate"], p)
        series.append((label, [points[r] for r in sorted(points)]))
    svg = render(series, a.title, a.target_ms)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(svg)
    print(f"wrote {a.out} ({sum(len(p) for _, p in series)} points)")


if __name__ == "__main__":
    main()
