"""Output of the benchmarks: Markdown tables on stdout, CSV/JSON files and PNG plots
in the output folder, progress bars on stderr."""

import csv
import dataclasses
import json
import pathlib
import sys
from collections.abc import Iterable

import jax
import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402


def device() -> str:
    """What JAX computes on: `"cpu"`, or e.g. `"gpu: NVIDIA H100 80GB HBM3"`."""
    first = jax.devices()[0]
    if first.platform == "cpu":
        return "cpu"
    return f"{first.platform}: {first.device_kind}"


def progress(items: Iterable, description: str, total: int | None = None):
    """A progress bar over `items` (on stderr, so that stdout keeps the tables)."""
    return tqdm(items, desc=description, total=total, file=sys.stderr, leave=False)


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A Markdown table under a title line; printed as well as returned."""
    lines = [f"\n{title}\n", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(out: pathlib.Path, name: str, data) -> pathlib.Path:
    path = out / name
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def write_csv(out: pathlib.Path, name: str, rows: list[dict]) -> pathlib.Path:
    """One row per measurement; the columns are the keys of the first row."""
    path = out / name
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# The paper's methods (Table 1) plus per-layer checkpointing, in the order of every
# table and figure.
METHODS = (
    "backprop",
    "checkpointed",
    "reversible",
    "mixed",
    "moonwalk",
    "forward",
    "projected forward",
)
# One colour per method in every figure; a variant ("mixed (anchors every 8)")
# takes its method's colour unless it has its own.
COLORS = {
    name: f"C{i}"
    for i, name in enumerate(
        (*METHODS, "mixed (no anchors)", "binomial (Equinox internal)")
    )
}


def color(label: str) -> str | None:
    return COLORS.get(label, COLORS.get(label.split(" (")[0]))


@dataclasses.dataclass
class Panel:
    """One set of axes: a line per entry of `series` (label -> (xs, ys))."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[list, list]]
    logy: bool = False


def save_plot(out: pathlib.Path, name: str, *panels: Panel) -> pathlib.Path:
    """Panels side by side in one small PNG."""
    figure, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 3.6), dpi=100, squeeze=False
    )
    # Exact methods often draw the same curve: vary the line style so that
    # coinciding lines still show.
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, (label, (xs, ys)) in enumerate(panel.series.items()):
            style = dict(marker="o", markersize=3, color=color(label), label=label)
            ax.plot(xs, ys, styles[i % 4], **style)
        xs = sorted({x for xs, _ in panel.series.values() for x in xs})
        if len(xs) <= 12:  # layers per block: integers, tick each
            ax.set_xticks(xs)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    path = out / name
    figure.savefig(path)
    plt.close(figure)
    return path


def save_scatter(
    out: pathlib.Path, name: str, *panels: Panel, columns: int = 3
) -> pathlib.Path:
    """Panels of points (each series one or more `(x, y)`), in rows of `columns`,
    one legend below: e.g. memory against time, one point per method. A label has
    the same colour and marker in every panel."""
    rows = -(-len(panels) // columns)
    width = min(columns, len(panels))
    figure, axes = plt.subplots(
        rows, width, figsize=(5.2 * width, 4.2 * rows), dpi=100, squeeze=False
    )
    markers = {}  # one marker per label, the same in every panel
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, (xs, ys) in panel.series.items():
            marker = markers.setdefault(label, "os^vD<>pPX*h"[len(markers) % 12])
            style = dict(color=color(label), marker=marker)
            ax.scatter(xs, ys, s=30, label=label, **style)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.title.set_fontsize(9)
        if panel.logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    legend = {}  # every panel's labels once (a method may not apply to all)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    ncol = min(6, 3 * width)
    lines = -(-len(legend) // ncol)
    figure.legend(
        list(legend.values()), list(legend), fontsize=7, loc="lower center", ncol=ncol
    )
    # Room for the legend's lines under the panels (in figure fractions).
    figure.tight_layout(rect=(0, 0.045 * lines / rows, 1, 1))
    path = out / name
    figure.savefig(path)
    plt.close(figure)
    return path
