"""Plotly figures of the studio, built from the plain rows that fsl_app.run_tables and fsl_app.inspect_run return."""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

METRIC_NAMES = {"loss": "loss", "train_acc": "train accuracy", "val_acc": "validation accuracy"}
CLASS_COLOURS = px.colors.qualitative.D3
DASH = {"loss": "solid", "train_acc": "solid", "val_acc": "dot"}


def training_curves(rows: list[dict], *, height: int = 300) -> go.Figure:
    """Loss (left) and train / validation accuracy (right) per epoch; one colour per run (per metric if one run)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    palette = CLASS_COLOURS
    series = list(dict.fromkeys(row["run"] for row in rows))
    for number, name in enumerate(series):
        for index, metric in enumerate(METRIC_NAMES):
            colour = palette[(number if len(series) > 1 else index) % len(palette)]
            points = [row for row in rows if row["run"] == name and row["metric"] == metric]
            if not points:
                continue
            figure.add_trace(go.Scatter(
                x=[p["epoch"] if p.get("epoch") is not None else p["step"] for p in points],
                y=[p["value"] for p in points], mode="lines+markers", name=f"{name} · {METRIC_NAMES[metric]}",
                line={"color": colour, "dash": DASH[metric]}),
                row=1, col=1 if metric == "loss" else 2)
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.3})
    return figure


def confusion_heatmap(classes: list[str], matrix: list[list[int]], title: str) -> go.Figure:
    figure = px.imshow(matrix, x=classes, y=classes, text_auto=True, color_continuous_scale="Blues",
                       labels={"x": "predicted", "y": "true", "color": "images"}, title=title)
    figure.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10}, coloraxis_showscale=False)
    return figure


def per_class_bars(rows: list[dict]) -> go.Figure:
    figure = px.bar(rows, x="class", y="accuracy %", color="run", barmode="group", range_y=[0, 100],
                    color_discrete_sequence=CLASS_COLOURS)
    figure.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         legend={"orientation": "h", "y": -0.3})
    return figure


def embedding_scatter(points: list[dict], title: str) -> go.Figure:
    """Points coloured by class; symbol: held-out, training only, prototype; hover: file name."""
    figure = px.scatter(points, x="x", y="y", color="label", symbol="role", hover_name="file",
                        custom_data=["path"], title=title, color_discrete_sequence=CLASS_COLOURS,
                        symbol_map={"held-out (evaluated)": "circle", "training only": "circle-open",
                                    "prototype": "star"},
                        labels={"label": "class", "role": ""})
    figure.update_traces(marker={"size": 11})
    figure.update_traces(marker={"size": 20, "line": {"width": 1, "color": "black"}},
                         selector={"marker_symbol": "star"})
    figure.update_layout(height=480, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title="", yaxis_title="")
    return figure


def probability_bars(top_k: list[dict]) -> go.Figure:
    figure = px.bar(top_k[::-1], x="probability", y="label", orientation="h", range_x=[0, 1], text_auto=".0%")
    figure.update_layout(height=60 + 40 * len(top_k), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis_tickformat=".0%", yaxis_title="")
    return figure
