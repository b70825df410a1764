"""Grouped horizontal bar charts as plain SVG (no plotting library needed).

Used by compare.py to draw CPU per request and throughput per workload beside its tables.
"""
import math
from html import escape

COLORS = {
    "direct": "#8c8c8c",
    "alone": "#bdbdbd",
    "server alone (floor)": "#bdbdbd",
    "nutcracker": "#e6862e",
    "legate": "#2f6fb3",
    "legate --workers 1": "#79a8d9",
}
FALLBACK = ["#4e9a06", "#ad7fa8", "#c4a000", "#cc0000"]


def _fmt(v):
    if v == 0:
        return "0"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _tick(v):
    return f"{int(v):,}" if v == int(v) else f"{v:g}"


def _nice_step(vmax):
    """A round tick step giving about four ticks up to vmax."""
    raw = vmax / 4
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def bar_chart(path, title, subtitle, unit, groups, series):
    """Write an SVG to `path`.

    groups: the workload names, top to bottom. series: {name: [value or None per group]}; a
    None draws no bar (e.g. no proxy CPU for a target reached directly).
    """
    names = list(series)
    bar_h, gap, label_w, plot_w, value_w = 13, 12, 210, 460, 70
    subtitles = subtitle.split("\n")
    top = 50 + 16 * len(subtitles) + 18 * ((len(names) + 3) // 4)
    group_h = bar_h * len(names) + gap
    height = top + group_h * len(groups) + 44
    width = label_w + plot_w + value_w + 20
    vmax = max([v for vs in series.values() for v in vs if v is not None] or [1.0]) or 1.0
    step = _nice_step(vmax)
    ticks = math.ceil(vmax / step - 1e-9)
    vmax = step * ticks
    color = {n: COLORS.get(n, FALLBACK[i % len(FALLBACK)]) for i, n in enumerate(names)}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for i, line in enumerate(subtitles):
        out.append(f'<text x="10" y="{40 + 16 * i}" fill="#555">{escape(line)}</text>')
    for i, n in enumerate(names):
        x, y = 10 + (i % 4) * 190, 36 + 16 * len(subtitles) + 18 * (i // 4)
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{color[n]}"/>')
        out.append(f'<text x="{x + 17}" y="{y + 10}">{escape(n)}</text>')
    for k in range(ticks + 1):
        gx = label_w + plot_w * k / ticks
        out.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{height - 40}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{gx:.1f}" y="{height - 26}" text-anchor="middle" fill="#555">{_tick(step * k)}</text>')
    out.append(f'<text x="{label_w + plot_w / 2}" y="{height - 8}" text-anchor="middle" fill="#555">{escape(unit)}</text>')
    for gi, g in enumerate(groups):
        gy = top + gi * group_h
        mid = gy + bar_h * len(names) / 2
        out.append(f'<text x="{label_w - 8}" y="{mid + 4:.1f}" text-anchor="end">{escape(g)}</text>')
        for si, n in enumerate(names):
            v = series[n][gi]
            if v is None:
                continue
            w = max(plot_w * v / vmax, 1)
            y = gy + si * bar_h
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{color[n]}">'
                       f'<title>{escape(n)}: {_fmt(v)} {escape(unit)}</title></rect>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}" font-size="10" fill="#333">{_fmt(v)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
