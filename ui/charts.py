"""Plotly figure builders: pure functions of run data that return `go.Figure` (no Streamlit here).

Large maps use `go.Scattergl` (WebGL), one trace per class; per-point hover data goes through
`customdata` + `hovertemplate` as whole arrays, so building a 50,000-point figure costs no Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

ColourBy = Literal["given", "suggested", "clean"]
COLOUR_BY_COLUMN = {"given": "given_label", "suggested": "suggested_label"}
CLEAN_COLOUR = "#2f6f4f"
NOISY_COLOUR = "#c0392b"
_PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Alphabet
_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
LOG_SCALE_RATIO = 10  # loss histogram: log counts once the tallest bar is 10x the noisy component's peak


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    """A stable colour per class (same class, same colour on every chart)."""
    return {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(classes)}


# ----------------------------------------------------------------------------- data page


def class_counts_figure(counts: dict[str, int]) -> go.Figure:
    """Images per class (the intake report)."""
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), marker_color=CLEAN_COLOUR,
                           hovertemplate="%{x}: %{y} images<extra></extra>"))
    fig.update_layout(title="Images per class", xaxis_title="class", yaxis_title="images", margin=_MARGIN,
                      xaxis_type="category", height=320)
    return fig


# ----------------------------------------------------------------------------- inspect page


def clean_noisy_counts(samples: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per given class: clean and flagged counts (index = class)."""
    table = pd.crosstab(samples["given_label"], samples["flagged"].astype(bool))
    table = table.reindex(columns=[False, True], fill_value=0)
    table.columns = ["clean", "flagged"]
    if classes is not None:
        table = table.reindex(list(classes), fill_value=0)
    return table


def clean_noisy_figure(samples: pd.DataFrame, classes: Sequence[str] | None = None) -> go.Figure:
    """Stacked bars: how many images of each given class look clean vs suspected mislabeled."""
    table = clean_noisy_counts(samples, classes)
    x = table.index.astype(str).tolist()
    fig = go.Figure([
        go.Bar(name="clean", x=x, y=table["clean"], marker_color=CLEAN_COLOUR,
               hovertemplate="%{x}: %{y} clean<extra></extra>"),
        go.Bar(name="flagged", x=x, y=table["flagged"], marker_color=NOISY_COLOUR,
               hovertemplate="%{x}: %{y} flagged<extra></extra>"),
    ])
    fig.update_layout(barmode="stack", title="Clean vs flagged per given label", xaxis_title="given label",
                      yaxis_title="images", xaxis_type="category", margin=_MARGIN, height=360)
    return fig


def mixture_curves(split: dict[str, Any], x: np.ndarray, n: int, bin_width: float) -> list[np.ndarray]:
    """The two weighted Gaussian components of split.json, scaled to a count histogram.

    pdf_k(x) = weights[k] * N(x; means[k], stds[k]); times n * bin_width it is in images per bin.
    """
    curves = []
    for mean, std, weight in zip(split["means"], split["stds"], split["weights"], strict=True):
        std = max(float(std), 1e-6)
        pdf = float(weight) * np.exp(-0.5 * ((x - float(mean)) / std) ** 2) / (std * np.sqrt(2 * np.pi))
        curves.append(pdf * n * bin_width)
    return curves


def loss_histogram_figure(loss_norm: np.ndarray, split: dict[str, Any] | None, bins: int = 50) -> go.Figure:
    """Histogram of the normalised per-sample loss, the GMM's two components over it, and the threshold.

    A good classifier puts most images in the first bin: when that spike is more than LOG_SCALE_RATIO
    times the noisy component's peak, a linear axis would flatten the noisy component into the floor, so
    the counts go on a log axis (from half an image to above the tallest bar: the curves' far tails must
    not stretch it). Otherwise the plain linear counts read more easily.
    """
    loss_norm = np.asarray(loss_norm, dtype=np.float64)
    loss_norm = loss_norm[np.isfinite(loss_norm)]
    lo, hi = (0.0, 1.0) if loss_norm.size == 0 else (min(0.0, loss_norm.min()), max(1.0, loss_norm.max()))
    counts, edges = np.histogram(loss_norm, bins=bins, range=(lo, hi))
    width = float(edges[1] - edges[0])
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centres, y=counts, width=width, name="images", marker_color="#9fb8ad",
                           hovertemplate="loss %{x:.3f}: %{y} images<extra></extra>"))
    top = float(max(counts.max(initial=0), 1))
    noisy_peak = 0.0
    if split and split.get("means") and split.get("stds") and split.get("weights"):
        xs = np.linspace(lo, hi, 400)
        names = ("clean component", "noisy component")
        colours = (CLEAN_COLOUR, NOISY_COLOUR)
        for curve, name, colour in zip(mixture_curves(split, xs, int(loss_norm.size), width), names, colours,
                                       strict=False):
            fig.add_trace(go.Scatter(x=xs, y=curve, mode="lines", name=name, line={"color": colour, "width": 2}))
            top = max(top, float(curve.max(initial=0)))
        noisy_peak = float(fig.data[-1].y.max(initial=0)) if len(fig.data) == 3 else 0.0
    threshold = (split or {}).get("loss_threshold")
    if threshold is not None:
        fig.add_vline(x=float(threshold), line_dash="dash", line_color="#333",
                      annotation_text=f"threshold {float(threshold):.3f}", annotation_position="top")
    log = noisy_peak > 0 and counts.max(initial=0) > LOG_SCALE_RATIO * noisy_peak
    yaxis = ({"title": "images (log scale)", "type": "log", "range": [np.log10(0.5), np.log10(top * 2)], "dtick": 1}
             if log else {"title": "images"})
    axis = "normalised √loss" if (split or {}).get("scale") == "sqrt" else "normalised loss"  # what the mixture saw
    fig.update_layout(title="Per-image loss and the two-component mixture", xaxis_title=axis,
                      yaxis=yaxis, bargap=0, margin=_MARGIN, height=360, legend={"orientation": "h", "y": -0.2})
    return fig


@dataclass(frozen=True)
class UmapFigure:
    figure: go.Figure
    trace_rows: list[np.ndarray]  # trace k, point j -> samples.csv row trace_rows[k][j]

    def rows_of(self, points: Sequence[dict[str, Any]]) -> np.ndarray:
        """samples.csv rows of the points of a Plotly selection (curve_number + point_index)."""
        rows = []
        for p in points:
            k, j = p.get("curve_number"), p.get("point_index", p.get("point_number"))
            if k is None or j is None or not 0 <= k < len(self.trace_rows) or not 0 <= j < len(self.trace_rows[k]):
                continue
            rows.append(int(self.trace_rows[k][j]))
        return np.unique(np.asarray(rows, dtype=np.int64))


_UMAP_HOVER = "%{hovertext}<br>clean prob: %{customdata:.2f}<extra></extra>"
# The most points the map draws; above it, a seeded random sample of the images (the map is still fitted
# on all of them, or on its own sample: engine.method.embed). Plotly deep-copies every array of a figure
# twice on its way to the browser, and a browser pans 50,000 WebGL points smoothly, not 200,000.
MAP_POINTS = 50_000


def map_rows(n: int, max_points: int = MAP_POINTS, seed: int = 0) -> np.ndarray:
    """The samples.csv rows the map draws: all of them, or a sorted seeded sample of `max_points`."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def umap_figure(samples: pd.DataFrame, coords: np.ndarray, colour_by: ColourBy = "given",
                classes: Sequence[str] | None = None, marker_size: float | None = None,
                max_points: int = MAP_POINTS) -> UmapFigure:
    """The embedding map as WebGL scatter traces; hover shows the image name and its labels.

    Hover text is one string per point and customdata one float (the clean probability): an object
    array of several columns costs Plotly a Python-level deep copy of every cell (7 s at 200,000 points).
    """
    drawn = map_rows(len(samples), max_points)
    samples = samples.iloc[drawn]
    coords = coords[drawn]
    n = len(samples)
    names = samples["path"].str.rsplit("/", n=1).str[-1]
    hover = ("<b>" + names.astype(str) + "</b><br>given: " + samples["given_label"].astype(str) + "<br>suggested: "
             + samples["suggested_label"].astype(str)).to_numpy(dtype=object)
    custom = np.round(samples["clean_prob"].to_numpy(dtype=np.float64), 3)
    size = marker_size or (3 if n > 20_000 else 5 if n > 2_000 else 7)
    x = coords[:, 0]
    y = coords[:, 1]
    traces: list[go.Scattergl] = []
    trace_rows: list[np.ndarray] = []
    if colour_by == "clean":
        rows = np.arange(n)
        traces.append(go.Scattergl(
            x=x, y=y, mode="markers", customdata=custom, hovertext=hover, hovertemplate=_UMAP_HOVER, name="images",
            marker={"size": size, "color": samples["clean_prob"].to_numpy(dtype=np.float64),
                    "colorscale": "RdYlGn", "cmin": 0, "cmax": 1, "colorbar": {"title": "clean prob"}},
        ))
        trace_rows.append(drawn[rows])
    else:
        labels = samples[COLOUR_BY_COLUMN[colour_by]].to_numpy(dtype=object)
        order = list(classes) if classes else sorted(pd.unique(labels).tolist())
        order += sorted(set(pd.unique(labels).tolist()) - set(order))
        colours = class_colours(order)
        codes = pd.Categorical(labels, categories=order).codes
        by_code = np.argsort(codes, kind="stable")  # one sort instead of a mask per class
        bounds = np.searchsorted(codes[by_code], np.arange(len(order) + 1))
        for k, label in enumerate(order):
            rows = by_code[bounds[k]:bounds[k + 1]]
            if rows.size == 0:
                continue
            traces.append(go.Scattergl(
                x=x[rows], y=y[rows], mode="markers", name=str(label), customdata=custom[rows],
                hovertext=hover[rows], hovertemplate=_UMAP_HOVER, marker={"size": size, "color": colours[label]},
            ))
            trace_rows.append(drawn[rows])
    fig = go.Figure(traces)
    title = {"given": "given label", "suggested": "suggested label", "clean": "clean probability"}[colour_by]
    fig.update_layout(title=f"Embedding map (UMAP), coloured by {title}", margin=_MARGIN, height=560,
                      dragmode="lasso", xaxis={"visible": False}, yaxis={"visible": False},
                      legend={"itemsizing": "constant"})
    return UmapFigure(fig, trace_rows)


def confusion_counts(samples: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Images per (given label, suggested label): rows = given, columns = suggested."""
    table = pd.crosstab(samples["given_label"], samples["suggested_label"])
    order = list(classes) if classes else sorted(set(table.index) | set(table.columns))
    return table.reindex(index=order, columns=order, fill_value=0)


def largest_disagreement(table: pd.DataFrame) -> tuple[str, str]:
    """(given, suggested) of the biggest off-diagonal cell of `confusion_counts` (the first cell if none)."""
    z = table.to_numpy().copy()
    if z.size == 0:
        raise ValueError("empty confusion table")
    np.fill_diagonal(z, -1)
    i, j = np.unravel_index(int(np.argmax(z)), z.shape)
    return str(table.index[i]), str(table.columns[j])


def confusion_figure(table: pd.DataFrame) -> go.Figure:
    """Given vs suggested label heatmap; the off-diagonal cells are where the model disagrees."""
    labels_x = table.columns.astype(str).tolist()
    labels_y = table.index.astype(str).tolist()
    z = table.to_numpy()
    fig = go.Figure(go.Heatmap(
        z=np.log1p(z), x=labels_x, y=labels_y, customdata=z, colorscale="Blues", showscale=False,
        text=z, texttemplate="%{text}",
        hovertemplate="given %{y} → suggested %{x}: %{customdata} images<extra></extra>",
    ))
    fig.update_layout(title="Given label vs suggested label (click a cell to review it)", margin=_MARGIN,
                      xaxis={"title": "suggested label", "type": "category"},
                      yaxis={"title": "given label", "type": "category", "autorange": "reversed"},
                      height=max(320, 36 * len(labels_y) + 120))
    return fig


# ----------------------------------------------------------------------------- training curves


def epoch_events(events: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Epoch events as a table: stage, epoch, loss, step (a running count across stages), test_acc."""
    rows = [e for e in events if e.get("kind") == "epoch" and e.get("loss") is not None]
    frame = pd.DataFrame(rows, columns=["stage", "epoch", "epochs", "loss", "images_per_s", "test_acc"])
    if frame.empty:
        return frame.assign(step=pd.Series(dtype=int))
    return frame.assign(step=np.arange(1, len(frame) + 1))


def loss_curves_figure(events: Sequence[dict[str, Any]], title: str = "Training loss") -> go.Figure:
    """One loss curve per stage (pre-training, warm-up, training, ...), x = epochs so far."""
    frame = epoch_events(events)
    fig = go.Figure()
    for stage, part in frame.groupby("stage", sort=False):
        fig.add_trace(go.Scatter(x=part["step"], y=part["loss"], mode="lines+markers", name=str(stage),
                                 hovertemplate=f"{stage} epoch %{{customdata}}: loss %{{y:.4f}}<extra></extra>",
                                 customdata=part["epoch"]))
    fig.update_layout(title=title, xaxis_title="epochs so far", yaxis_title="loss", margin=_MARGIN, height=300,
                      legend={"orientation": "h", "y": -0.3})
    return fig


def compare_curves_figure(runs: dict[str, Sequence[dict[str, Any]]]) -> go.Figure:
    """Loss curves of several runs on one chart (dashed per run, one colour per stage)."""
    fig = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot")
    for i, (name, events) in enumerate(runs.items()):
        frame = epoch_events(events)
        for stage, part in frame.groupby("stage", sort=False):
            fig.add_trace(go.Scatter(x=part["step"], y=part["loss"], mode="lines", name=f"{name} · {stage}",
                                     line={"dash": dashes[i % len(dashes)]}))
    fig.update_layout(title="Loss curves", xaxis_title="epochs so far", yaxis_title="loss", margin=_MARGIN,
                      height=340, legend={"orientation": "h", "y": -0.3})
    return fig
