"""Reports of experiments: markdown with small SVG plots, and an offline interactive plotly page.

Every number comes from a run's card (``runs/<experiment>/<run>/model.json``): its curve, its
``val_metrics`` (best epoch), ``test_metrics`` / ``train_metrics`` (that checkpoint evaluated at the
end) and its ``experiment`` section (threads, wall and CPU time). Runs that share all settings but the
seed form a group, reported as the mean, the sample standard deviation and the range over seeds.
The SVGs are written by hand (no plotting library), so the report needs nothing beyond the core.
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg.config import REPO_ROOT
from seg.io import atomic_write_text
from seg.runs import ExperimentError, RunRecord, experiment_runs, runs_dir

#: metrics reported per split, in table order
METRICS = (("miou", "mIoU"), ("map", "mAP"), ("pixel_accuracy", "pixel acc."))
SPLITS = ("train", "val", "test")
#: curve columns plotted per epoch
CURVES = (("miou", "val mIoU"), ("map", "val mAP"), ("train_loss", "train loss"), ("val_loss", "val loss"))
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
)


def fmt(value: Any, digits: int = 4) -> str:
    """A metric as the report prints it (the tests compare cards with this)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):.{digits}f}"


@dataclass
class Group:
    """Runs that differ only in their seed."""

    label: str
    runs: list[RunRecord]

    def values(self, split: str, key: str) -> list[float]:
        out = []
        for run in self.runs:
            value = metric(run, split, key)
            if value is not None:
                out.append(float(value))
        return out


def metric(run: RunRecord, split: str, key: str) -> float | None:
    metrics = (run.card or {}).get(f"{split}_metrics") or {}
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def summary(values: list[float]) -> dict[str, float | int | None]:
    """mean, sample standard deviation (None for one value), min, max, n."""
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def mean_sd(values: list[float]) -> str:
    s = summary(values)
    if s["mean"] is None:
        return "–"
    if s["sd"] is None:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} ± {fmt(s['sd'])}"


def group_label(run: RunRecord) -> str:
    """The run's name without its seed: the group it belongs to."""
    parts = [p for p in run.name.split(",") if not p.startswith("seed=")]
    return ",".join(parts) or "all seeds"


def groups_of(runs: list[RunRecord]) -> list[Group]:
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(group_label(run), Group(group_label(run), [])).runs.append(run)
    return list(groups.values())


def info(run: RunRecord) -> dict:
    return (run.card or {}).get("experiment") or {}


def minutes(seconds: Any) -> str:
    return "–" if not isinstance(seconds, (int, float)) else f"{seconds / 60:.1f}"


# -- SVG plots ----------------------------------------------------------------------------------


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while not ticks or ticks[-1] < hi - step * 1e-6:  # the last tick covers ``hi``
        ticks.append(round(value, 10))
        value += step
    return ticks


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
        f'<rect width="{width}" height="{height}" fill="white"/>'
        f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>'
        + "".join(body)
        + "</svg>\n"
    )


def line_chart(series: list[tuple[str, list[float], list[float]]], title: str, xlabel: str = "epoch") -> str:
    """One line per series (label, xs, ys); legend on the right."""
    width, height, left, right, top, bottom = 560, 240, 48, 200, 26, 34
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if not points:
        return _svg(width, height, ['<text x="20" y="60">no data</text>'], title)
    xlo, xhi = min(p[0] for p in points), max(p[0] for p in points)
    ylo, yhi = min(p[1] for p in points), max(p[1] for p in points)
    pad = (yhi - ylo) * 0.05 or 0.05
    yt = _ticks(ylo - pad, yhi + pad)
    ylo, yhi = yt[0], yt[-1]
    xhi = xhi if xhi > xlo else xlo + 1
    pw, ph = width - left - right, height - top - bottom
    sx = lambda x: left + (x - xlo) / (xhi - xlo) * pw  # noqa: E731
    sy = lambda y: top + ph - (y - ylo) / (yhi - ylo) * ph  # noqa: E731
    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in yt:
        body.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>'
        )
    step = next(m for m in (1, 2, 5, 10, 20, 50, 100, 10**9) if (xhi - xlo) / m <= 8)
    xt = list(range(int(math.ceil(xlo / step) * step), int(xhi) + 1, step)) or [int(xlo)]
    for t in xt:
        body.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{t}</text>')
    body.append(f'<text x="{left + pw / 2:.0f}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
    for i, (label, xs, ys) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if len(pts) > 1:
            body.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="'
                + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                + '"/>'
            )
        for x, y in pts:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>')
        ly = top + 6 + i * 14
        body.append(
            f'<line x1="{width - right + 10}" x2="{width - right + 26}" y1="{ly}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"/><text x="{width - right + 30}" y="{ly + 4}">'
            f"{html.escape(label[:30])}</text>"
        )
    return _svg(width, height, body, title)


def bar_chart(labels: list[str], series: list[tuple[str, list[float | None], list[float | None]]], title: str) -> str:
    """Grouped bars with error bars: series = (name, means, sds) over ``labels``."""
    n = max(1, len(labels))
    width, height, left, top, bottom = max(420, 70 * n + 80), 260, 48, 26, 90
    pw, ph = width - left - 16, height - top - bottom
    values = [v for _, means, sds in series for v, s in zip(means, sds) if v is not None for v in (v, v + (s or 0))]
    hi = _ticks(0, max(values or [1.0]) * 1.05)[-1]
    sy = lambda y: top + ph - y / hi * ph  # noqa: E731
    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(0, hi):
        body.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>'
        )
    slot = pw / n
    bw = slot * 0.8 / max(1, len(series))
    for i, label in enumerate(labels):
        x0 = left + i * slot + slot * 0.1
        for k, (_, means, sds) in enumerate(series):
            if means[i] is None:
                continue
            x = x0 + k * bw
            body.append(
                f'<rect x="{x:.1f}" y="{sy(means[i]):.1f}" width="{bw - 2:.1f}" '
                f'height="{sy(0) - sy(means[i]):.1f}" fill="{PALETTE[k % len(PALETTE)]}"/>'
            )
            if sds[i]:
                cx = x + (bw - 2) / 2
                body.append(
                    f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(means[i] - sds[i]):.1f}" '
                    f'y2="{sy(means[i] + sds[i]):.1f}" stroke="black"/>'
                )
        cx = left + (i + 0.5) * slot
        body.append(
            f'<text transform="translate({cx:.1f},{top + ph + 10}) rotate(30)" font-size="10">'
            f"{html.escape(label[:34])}</text>"
        )
    for k, (name, _, _) in enumerate(series):
        body.append(
            f'<rect x="{left + 4 + k * 90}" y="{top + 4}" width="10" height="10" '
            f'fill="{PALETTE[k % len(PALETTE)]}"/><text x="{left + 18 + k * 90}" y="{top + 13}">'
            f"{html.escape(name)}</text>"
        )
    return _svg(int(width), height, body, title)


def heatmap(matrix: list[list[float]], labels: list[str], title: str) -> str:
    """Confusion matrix, rows normalised to 100 % (rows truth, columns prediction)."""
    n = len(labels)
    cell, left, top = 34, 84, 40
    width, height = left + n * cell + 10, top + n * cell + 70
    body = []
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, value in enumerate(row):
            share = value / total
            shade = int(255 - 200 * share)
            body.append(
                f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                f'fill="rgb({shade},{shade},255)" stroke="white"/>'
                f'<text x="{left + j * cell + cell / 2:.0f}" y="{top + i * cell + cell / 2 + 4:.0f}" '
                f'text-anchor="middle" font-size="9" fill="{"white" if share > 0.5 else "black"}">'
                f"{100 * share:.0f}</text>"
            )
        body.append(
            f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4:.0f}" text-anchor="end">'
            f"{html.escape(labels[i])}</text>"
        )
    for j, label in enumerate(labels):
        body.append(
            f'<text transform="translate({left + j * cell + cell / 2:.0f},{top + n * cell + 8}) rotate(45)" '
            f'font-size="10">{html.escape(label)}</text>'
        )
    body.append(f'<text x="8" y="{top - 6}" font-size="10">truth \u2193 / prediction \u2192, % of each row</text>')
    return _svg(width, height, body, title)


# -- markdown -----------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _splits_present(runs: list[RunRecord]) -> list[str]:
    return [s for s in SPLITS if any((r.card or {}).get(f"{s}_metrics") for r in runs)]


def _settings_text(run: RunRecord) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_value_text(v)}" for k, v in run.settings.items()) or "–"


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(_value_text(v) for v in value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def build_report(name: str, root: str | Path | None = None, plot_prefix: str = "") -> tuple[str, dict[str, str]]:
    """(markdown, {plot file name: SVG text}) for experiment ``name``; plots are linked as ``plot_prefix + file``."""
    manifest, records = experiment_runs(name, root)
    done = [r for r in records if r.status == "finished" and r.card]
    title = manifest.get("title") or name
    lines = [f"# {title}", ""]
    if manifest.get("question"):
        lines += [f"**Question.** {manifest['question']}", ""]
    if manifest.get("description"):
        lines += [manifest["description"], ""]
    if manifest.get("notes"):
        lines += [manifest["notes"], ""]
    source = manifest.get("source") or f"{name}.toml"
    lines += [
        "Reproduce: `seglab experiment " + source + "` (finished runs are skipped, interrupted ones resume), "
        f"then `seglab experiment-report {name}`. Runs: `runs/{name}/<run>/model.json` (card) and "
        "`model.safetensors` (best checkpoint by val mIoU); test and train metrics are that checkpoint "
        "evaluated at the end.",
        "",
    ]
    missing = [r for r in records if r not in done]
    if missing:
        lines += [
            f"**{len(missing)} of {len(records)} runs are not finished** "
            f"({', '.join(f'{r.name}: {r.status}' for r in missing)}); the numbers below cover the "
            "finished runs only.",
            "",
        ]
    plots: dict[str, str] = {}
    if not done:
        lines += ["No run has finished yet.", ""]
        return "\n".join(lines), plots
    splits = _splits_present(done)
    groups = groups_of(done)
    seeded = any(len(g.runs) > 1 for g in groups)
    lines += ["## Findings", ""] + [f"- {s}" for s in findings(done, groups, splits)] + [""]

    if seeded:
        lines += ["## Mean ± standard deviation over seeds", ""]
        headers = ["setting", "runs"] + [
            f"{s} {label}" for s in splits for key, label in METRICS if key != "pixel_accuracy"
        ]
        rows = []
        for g in groups:
            row = [g.label, str(len(g.runs))]
            for s in splits:
                for key, _ in METRICS:
                    if key != "pixel_accuracy":
                        row.append(mean_sd(g.values(s, key)))
            rows.append(row)
        lines += _table(headers, rows) + [""]
        rng = []
        for g in groups:
            parts = []
            for s in splits:
                st = summary(g.values(s, "miou"))
                if st["n"]:
                    parts.append(f"{s} {fmt(st['min'])}–{fmt(st['max'])}")
            rng.append([g.label, "; ".join(parts)])
        lines += ["Range of mIoU over the seeds:", ""] + _table(["setting", "min–max"], rng) + [""]
        bar_splits = [s for s in splits if s != "train"]
        plots["groups_miou.svg"] = bar_chart(
            [g.label for g in groups],
            [
                (
                    f"{s} mIoU",
                    [summary(g.values(s, "miou"))["mean"] for g in groups],
                    [summary(g.values(s, "miou"))["sd"] for g in groups],
                )
                for s in bar_splits
            ],
            "mean mIoU per setting (bars: ± 1 sd over seeds)",
        )
        lines += [f"![mean mIoU per setting]({plot_prefix}groups_miou.svg)", ""]

    lines += ["## Runs", ""]
    headers = (
        ["run", "settings", "best epoch"]
        + [f"{s} {label}" for s in splits for _, label in METRICS]
        + ["wall min", "CPU min", "threads"]
    )
    rows = []
    for r in done:
        card, ex = r.card or {}, info(r)
        row = [f"`{r.name}`", _settings_text(r), f"{card.get('best_epoch', '–')}/{len(card.get('curve') or [])}"]
        row += [fmt(metric(r, s, key)) for s in splits for key, _ in METRICS]
        row += [minutes(ex.get("wall_s")), minutes(ex.get("cpu_s")), str(ex.get("threads", "–"))]
        rows.append(row)
    lines += _table(headers, rows) + [""]
    total_wall = sum(float(info(r).get("wall_s") or 0) for r in done)
    total_cpu = sum(float(info(r).get("cpu_s") or 0) for r in done)
    cpus = sorted({str(info(r).get("cpu")) for r in done if info(r).get("cpu")})
    lines += [
        f"Wall and CPU time cover training and the final evaluations (CPU time: every thread of the run's "
        f"process); each run used the torch threads shown, on {', '.join(cpus) or 'an unrecorded CPU'}, "
        f"while other processes shared the machine. Total: {total_wall / 60:.1f} wall minutes, "
        f"{total_cpu / 60:.1f} CPU minutes for {len(done)} run{'s' if len(done) != 1 else ''}.",
        "",
    ]

    multi_epoch = [r for r in done if len((r.card or {}).get("curve") or []) > 1]
    if multi_epoch:
        lines += [
            "## Curves",
            "",
            "Per epoch, from each card's `curve` (val at the full 288x224 after every "
            "epoch; train loss is the mean over the epoch's augmented batches).",
            "",
        ]
        for key, label in CURVES:
            series = []
            for r in multi_epoch:
                curve = (r.card or {}).get("curve") or []
                series.append(
                    (
                        r.name,
                        [float(row["epoch"]) for row in curve],
                        [float(row[key]) if isinstance(row.get(key), (int, float)) else None for row in curve],
                    )
                )
            if any(y is not None for _, _, ys in series for y in ys):
                file = f"curve_{key}.svg"
                plots[file] = line_chart(series, label)
                lines += [f"![{label} per epoch]({plot_prefix}{file})", ""]

    if "train" in splits:
        lines += ["## Train / val gap", ""]
        rows = []
        for r in done:
            tr, va, te = metric(r, "train", "miou"), metric(r, "val", "miou"), metric(r, "test", "miou")
            gap = fmt(tr - va) if tr is not None and va is not None else "–"
            rows.append(
                [
                    f"`{r.name}`",
                    fmt(tr),
                    fmt(va),
                    fmt(te),
                    gap,
                    fmt(metric(r, "train", "pixel_accuracy")),
                    fmt(metric(r, "val", "pixel_accuracy")),
                ]
            )
        lines += _table(
            ["run", "train mIoU", "val mIoU", "test mIoU", "train − val mIoU", "train pixel acc.", "val pixel acc."],
            rows,
        ) + [""]
        plots["gap_miou.svg"] = bar_chart(
            [r.name for r in done],
            [(f"{s} mIoU", [metric(r, s, "miou") for r in done], [None] * len(done)) for s in splits],
            "mIoU on train, val and test",
        )
        lines += [f"![mIoU on train, val and test]({plot_prefix}gap_miou.svg)", ""]

    if len(done) <= 4:
        lines += per_class_section(done, splits)
    if len(done) == 1:
        run = done[0]
        classes = list((run.card or {}).get("classes") or [])
        for s in splits:
            cm = ((run.card or {}).get(f"{s}_metrics") or {}).get("confusion_matrix")
            if cm and classes:
                file = f"confusion_{s}.svg"
                plots[file] = heatmap(cm, classes, f"{run.name}: confusion matrix on {s}")
                lines += [f"![confusion matrix on {s}]({plot_prefix}{file})", ""]
                lines += confusion_table(cm, classes, s)
    return "\n".join(lines).rstrip() + "\n", plots


def per_class_section(runs: list[RunRecord], splits: list[str]) -> list[str]:
    classes = list((runs[0].card or {}).get("classes") or [])
    if not classes:
        return []
    lines = ["## Per class", ""]
    for key, label in (("iou", "IoU"), ("ap", "AP")):
        headers = ["class"] + [f"{r.name} {s}" if len(runs) > 1 else s for r in runs for s in splits]
        rows = []
        for c in classes:
            row = [c]
            for r in runs:
                for s in splits:
                    per = (((r.card or {}).get(f"{s}_metrics") or {}).get("per_class") or {}).get(c) or {}
                    row.append(fmt(per.get(key)))
            rows.append(row)
        mean_key = "miou" if key == "iou" else "map"
        rows.append(["**mean**"] + [fmt(metric(r, s, mean_key)) for r in runs for s in splits])
        lines += [f"{label} per class:", ""] + _table(headers, rows) + [""]
    return lines


def confusion_table(cm: list[list[float]], classes: list[str], split: str) -> list[str]:
    headers = [f"{split}: truth \\ prediction"] + classes
    rows = [[classes[i]] + [str(int(v)) for v in row] for i, row in enumerate(cm)]
    return [f"Confusion matrix on {split} (pixels; rows truth, columns prediction):", ""] + _table(headers, rows) + [""]


def findings(runs: list[RunRecord], groups: list[Group], splits: list[str]) -> list[str]:
    """Sentences with numbers, each computed from the cards (no hand-written figure)."""
    out = []
    eval_split = "test" if "test" in splits else None
    if len(groups) > 1:
        ranked = sorted(groups, key=lambda g: summary(g.values("val", "miou"))["mean"] or -1, reverse=True)
        best, worst = ranked[0], ranked[-1]

        def describe(g: Group) -> str:
            text = f"`{g.label}` (val mIoU {mean_sd(g.values('val', 'miou'))}"
            if eval_split:
                text += f", test {mean_sd(g.values(eval_split, 'miou'))}"
            return text + (f", {len(g.runs)} seeds)" if len(g.runs) > 1 else ")")

        out.append(f"Best on val: {describe(best)}; worst: {describe(worst)}.")
        if eval_split:
            by_test = sorted(groups, key=lambda g: summary(g.values(eval_split, "miou"))["mean"] or -1, reverse=True)
            order = " > ".join(f"`{g.label}` {fmt(summary(g.values(eval_split, 'miou'))['mean'])}" for g in by_test)
            out.append(f"Mean test mIoU, highest first: {order}.")
        out += main_effects(runs, eval_split)
        seeded = [g for g in groups if len(g.runs) > 1]
        if seeded:
            spread = max(
                (summary(g.values("val", "miou"))["max"] or 0) - (summary(g.values("val", "miou"))["min"] or 0)
                for g in seeded
            )
            out.append(
                f"Seed-to-seed range of val mIoU within a setting is up to {fmt(spread)}; differences "
                "between settings smaller than that are within the noise of this budget."
            )
    else:
        r = runs[0]
        parts = [f"{s} mIoU {fmt(metric(r, s, 'miou'))} / mAP {fmt(metric(r, s, 'map'))}" for s in splits]
        out.append(f"`{r.name}`: " + ", ".join(parts) + ".")
    if "train" in splits:
        for r in runs:
            tr, va = metric(r, "train", "miou"), metric(r, "val", "miou")
            if tr is not None and va is not None:
                out.append(f"`{r.name}`: train mIoU {fmt(tr)} against val {fmt(va)}, a gap of {fmt(tr - va)}.")
    multi = [r for r in runs if len((r.card or {}).get("curve") or []) > 1]
    if multi and len(multi) <= 6:
        for r in multi:
            card = r.card or {}
            curve = card.get("curve") or []
            losses = [(row["val_loss"], row["epoch"]) for row in curve if isinstance(row.get("val_loss"), (int, float))]
            lowest = f" (lowest {fmt(min(losses)[0], 3)} at epoch {min(losses)[1]})" if losses else ""
            out.append(
                f"`{r.name}`: best val mIoU {fmt(metric(r, 'val', 'miou'))} at epoch {card.get('best_epoch')} "
                f"of {len(curve)}; train loss {fmt(curve[0].get('train_loss'), 3)} → "
                f"{fmt(curve[-1].get('train_loss'), 3)}, val loss {fmt(curve[0].get('val_loss'), 3)} → "
                f"{fmt(curve[-1].get('val_loss'), 3)}{lowest}."
            )
    total = sum(float(info(r).get("cpu_s") or 0) for r in runs)
    wall = sum(float(info(r).get("wall_s") or 0) for r in runs)
    out.append(
        f"Compute: {total / 60:.1f} CPU minutes ({wall / 60:.1f} wall minutes) for {len(runs)} "
        f"run{'s' if len(runs) != 1 else ''}."
    )
    return out


def main_effects(runs: list[RunRecord], eval_split: str | None) -> list[str]:
    """For each grid setting: the mean over the grid's runs at each of its values (labelled groups left out)."""
    grid_runs = [r for r in runs if all("=" in part for part in r.name.split(","))]
    keys = [k for k in dict.fromkeys(k for r in grid_runs for k in r.settings) if k.split(".")[-1] != "seed"]
    if len(keys) < 2:
        return []
    out = []
    for key in keys:
        by_value: dict[str, list[RunRecord]] = {}
        for r in grid_runs:
            if key in r.settings:
                by_value.setdefault(_value_text(r.settings[key]), []).append(r)
        if len(by_value) < 2 or min(len(v) for v in by_value.values()) < 2:
            continue
        parts = []
        for value, members in by_value.items():
            group = Group(value, members)
            text = f"{value}: val {fmt(summary(group.values('val', 'miou'))['mean'])}"
            if eval_split:
                text += f", {eval_split} {fmt(summary(group.values(eval_split, 'miou'))['mean'])}"
            parts.append(text + f" ({len(members)} runs)")
        out.append(f"Mean mIoU by `{key.split('.')[-1]}` over the grid's runs: " + "; ".join(parts) + ".")
    return out


# -- interactive page ---------------------------------------------------------------------------


def html_report(name: str, root: str | Path | None = None) -> str:
    """One self-contained page (plotly.js inline, so it opens offline) with the report's figures and tables."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ModuleNotFoundError:
        raise ExperimentError("the interactive page needs plotly (pip install plotly)") from None
    manifest, records = experiment_runs(name, root)
    done = [r for r in records if r.status == "finished" and r.card]
    splits = _splits_present(done)
    figures = []
    multi = [r for r in done if len((r.card or {}).get("curve") or []) > 1]
    if multi:
        fig = make_subplots(rows=2, cols=2, subplot_titles=[label for _, label in CURVES])
        for i, r in enumerate(multi):
            curve = (r.card or {}).get("curve") or []
            colour = PALETTE[i % len(PALETTE)]
            for k, (key, _) in enumerate(CURVES):
                fig.add_trace(
                    go.Scatter(
                        x=[row["epoch"] for row in curve],
                        y=[row.get(key) for row in curve],
                        mode="lines+markers",
                        name=r.name,
                        legendgroup=r.name,
                        showlegend=k == 0,
                        line={"color": colour},
                    ),
                    row=k // 2 + 1,
                    col=k % 2 + 1,
                )
        fig.update_layout(height=640, title="Curves per epoch")
        fig.update_xaxes(dtick=1 if max(len((r.card or {}).get("curve") or []) for r in multi) <= 20 else None)
        figures.append(fig)
    groups = groups_of(done)
    if done:
        fig = go.Figure()
        for s in splits:
            fig.add_trace(
                go.Bar(
                    name=f"{s} mIoU",
                    x=[g.label for g in groups],
                    y=[summary(g.values(s, "miou"))["mean"] for g in groups],
                    error_y={"type": "data", "array": [summary(g.values(s, "miou"))["sd"] or 0 for g in groups]},
                )
            )
        fig.update_layout(barmode="group", title="mIoU per setting (mean ± sd over seeds)", height=420)
        figures.append(fig)
        keys = sorted({k for r in done for k in r.settings})
        for key in keys:
            xs = [_value_text(r.settings.get(key)) for r in done]
            if len(set(xs)) < 2:
                continue
            fig = go.Figure(
                go.Scatter(
                    x=xs,
                    y=[metric(r, "val", "miou") for r in done],
                    mode="markers",
                    text=[r.name for r in done],
                    marker={"size": 10},
                )
            )
            fig.update_layout(title=f"{key} against val mIoU", xaxis_title=key, yaxis_title="val mIoU", height=360)
            figures.append(fig)
        header = ["run"] + [f"{s} {label}" for s in splits for _, label in METRICS] + ["wall min", "CPU min", "threads"]
        cells = [[r.name for r in done]] + [
            [fmt(metric(r, s, key)) for r in done] for s in splits for key, _ in METRICS
        ]
        cells += [
            [minutes(info(r).get("wall_s")) for r in done],
            [minutes(info(r).get("cpu_s")) for r in done],
            [str(info(r).get("threads", "–")) for r in done],
        ]
        fig = go.Figure(go.Table(header={"values": header}, cells={"values": cells}))
        fig.update_layout(title="Runs", height=120 + 28 * len(done))
        figures.append(fig)
    if len(done) == 1:
        classes = list((done[0].card or {}).get("classes") or [])
        for s in splits:
            cm = ((done[0].card or {}).get(f"{s}_metrics") or {}).get("confusion_matrix")
            if cm:
                rows = [[v / (sum(row) or 1) for v in row] for row in cm]
                fig = go.Figure(
                    go.Heatmap(
                        z=rows,
                        x=classes,
                        y=classes,
                        colorscale="Blues",
                        text=cm,
                        hovertemplate="truth %{y}<br>prediction %{x}<br>%{text} pixels",
                    )
                )
                fig.update_layout(
                    title=f"confusion matrix on {s} (row-normalised)", height=480, yaxis={"autorange": "reversed"}
                )
                figures.append(fig)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    title = html.escape(manifest.get("title") or name)
    question = html.escape(manifest.get("question") or "")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + title + "</title></head>"
        "<body style='font-family:sans-serif;max-width:1100px;margin:auto'>"
        f"<h1>{title}</h1><p>{question}</p><p>Runs under runs/{html.escape(name)}/; every figure is read from "
        "their cards.</p>" + "".join(parts) + "</body></html>"
    )


def default_report_dir() -> Path:
    return REPO_ROOT / "docs" / "experiments"


def write_report(
    name: str, root: str | Path | None = None, out_dir: str | Path | None = None, html_out: str | Path | None = None
) -> list[Path]:
    """Write ``<out_dir>/<name>.md`` and its plots in ``<out_dir>/<name>/``; optionally the plotly page."""
    if not (runs_dir(root) / name).is_dir():
        raise ExperimentError(f"no experiment named {name!r} has been run (nothing in the runs folder)")
    out_dir = Path(out_dir) if out_dir else default_report_dir()
    markdown, plots = build_report(name, root, plot_prefix=f"{name}/")
    written = []
    for file, svg in plots.items():
        path = out_dir / name / file
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, svg)
        written.append(path)
    md = out_dir / f"{name}.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md, markdown)
    written.insert(0, md)
    if html_out:
        atomic_write_text(Path(html_out), html_report(name, root))
        written.append(Path(html_out))
    return written
