"""Interactive plotly figures of the site (:mod:`tdabench.report.site`): a metric-vs-cost plot and a per-query
plot of one task, from the leaderboard's rows; hovering a point or box shows its method, configuration,
seeds and ground truth.  One trace group per ground-truth regime, the one with the most rows shown, the
others a legend click away (regimes are never mixed in one view unless asked)."""
from __future__ import annotations

import html
from typing import Any

PLOTLY_JS = "plotly.min.js"   # written once next to index.html, loaded relatively
CONFIG = {"displaylogo": False, "responsive": True}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def _go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ImportError("the site needs plotly: pip install 'tdabench[site]'") from None
    return go


def plotly_js() -> str:
    """plotly.js itself (the copy bundled with the plotly package), to be written next to the page."""
    _go()
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def figure_html(fig: Any, div_id: str) -> str:
    """The figure as a ``<div>`` and its script; plotly.js is loaded once by the page, never from a CDN."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, include_mathjax=False, div_id=div_id,
                       config=CONFIG)


def regimes(rows: list[dict[str, Any]]) -> list[str]:
    """The ground-truth regimes of ``rows`` in the leaderboard's order."""
    return list(dict.fromkeys(r["ground_truth"] for r in rows))


def _text(value: Any) -> str:
    """``value`` safe inside a plotly hover label (which reads a little HTML) and template."""
    return html.escape(str(value)).replace("%", "&#37;")


def _f(x: Any) -> str:
    return "—" if x is None or x != x else f"{x:.3f}"


def _name(row: dict[str, Any]) -> str:
    """The method, marked ``(stale)`` as the leaderboard marks it."""
    return row["method"] + (" (stale)" if row["stale"] else "")


def _hover(row: dict[str, Any]) -> str:
    """The hover text of one leaderboard row: method, configuration, seeds, ground truth, mean ± SE."""
    return (f"<b>{_text(_name(row))}</b><br>"
            f"config: {_text(row['method_settings'] or 'defaults')}<br>"
            + (f"task: {_text(row['task_settings'])}<br>" if row["task_settings"] else "")
            + f"seeds: {', '.join(str(s) for s in row['seeds'])}<br>ground truth: {_text(row['ground_truth'])}<br>"
            f"{_text(row['metric'])}: {_f(row['mean'])} ± {_f(row['se'])}")


def shown_regime(rows: list[dict[str, Any]]) -> str:
    """The regime a plot opens on: the one with the most rows (the first of those in the leaderboard's order)."""
    labels = [r["ground_truth"] for r in rows]
    return max(regimes(rows), key=labels.count) if rows else ""


def _visible(regime: str, rows: list[dict[str, Any]]) -> Any:
    return True if regime == shown_regime(rows) else "legendonly"


def _seconds(row: dict[str, Any]) -> float:
    return max(row["fit_seconds"] + row["score_seconds"], 1e-3)


def cost_figure(rows: list[dict[str, Any]], task: str) -> Any:
    """The metric (mean ± SE) against fit + score seconds and against peak memory, log x; one trace per regime."""
    go = _go()
    from plotly.subplots import make_subplots

    metric = rows[0]["metric"] if rows else "lds"
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04)
    for i, regime in enumerate(regimes(rows)):
        chosen = [r for r in rows if r["ground_truth"] == regime]
        for col, x in ((1, [_seconds(r) for r in chosen]), (2, [max(r["peak_rss_mb"], 1e-3) for r in chosen])):
            fig.add_trace(go.Scatter(
                x=x, y=[r["mean"] for r in chosen], mode="markers+text", text=[_name(r) for r in chosen],
                textposition="top right", textfont={"size": 9, "color": COLORS[i % len(COLORS)]},
                error_y={"type": "data", "array": [r["se"] or 0.0 for r in chosen], "thickness": 1},
                marker={"color": COLORS[i % len(COLORS)], "size": 8}, name=regime, legendgroup=regime,
                showlegend=col == 1, visible=_visible(regime, rows), hovertext=[_hover(r) for r in chosen],
                hovertemplate="%{hovertext}<extra></extra>"), row=1, col=col)
    fig.update_xaxes(type="log", title_text="fit + score seconds (log)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="peak resident memory, MB (log)", row=1, col=2)
    fig.update_yaxes(title_text=f"{metric.upper()} (mean ± SE)", row=1, col=1)
    return _layout(fig, f"{task}: {metric.upper()} against cost (click a regime in the legend to show it)")


def _labels(rows: list[dict[str, Any]], width: int = 28) -> list[str]:
    """Short unique x labels: method and settings, cut to ``width``; the same config in two regimes shares one."""
    out: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["method"], r["method_settings"])
        text = " ".join(x for x in key if x)
        text = text if len(text) <= width else text[:width - 1] + "…"
        while key not in out and text in out.values():
            text += "'"
        out.setdefault(key, text)
    return [out[(r["method"], r["method_settings"])] for r in rows]


def per_query(row: dict[str, Any], metric: str) -> list[float]:
    """The per-query values of ``metric`` in a row's records, all seeds pooled (4 digits: plenty for a plot)."""
    return [round(v, 4) for e in row["entries"] for v in e.record.metrics[metric].get("per_query") or []
            if v is not None]


def per_query_figure(rows: list[dict[str, Any]], task: str) -> Any:
    """Box plots (with every point) of the per-query metric, seeds pooled, one per row, in the leaderboard's
    order (that of the regime shown first); one colour per regime, overlaid when several are shown."""
    go = _go()
    metric = rows[0]["metric"] if rows else "lds"
    fig = go.Figure()
    order = regimes(rows)
    labels = _labels(rows)
    for row, label in zip(rows, labels):
        i = order.index(row["ground_truth"])
        values = per_query(row, metric)
        fig.add_trace(go.Box(
            y=values, x=[label] * len(values), name=row["ground_truth"], legendgroup=row["ground_truth"],
            marker={"color": COLORS[i % len(COLORS)], "size": 2, "opacity": 0.35},
            line={"width": 1}, boxpoints="all", jitter=0.6, pointpos=0, hoveron="boxes+points",
            visible=_visible(row["ground_truth"], rows),
            showlegend=row is next(r for r in rows if r["ground_truth"] == row["ground_truth"]),
            hovertemplate=_hover(row) + "<br>this query: %{y:.3f}<extra></extra>"))
    shown = shown_regime(rows)
    first = [label for row, label in zip(rows, labels) if row["ground_truth"] == shown]
    fig.update_layout(boxmode="overlay", xaxis={"tickangle": -40, "title_text": "", "categoryorder": "array",
                                              "categoryarray": list(dict.fromkeys(first + labels))},
                      yaxis={"title_text": f"per-query {metric.upper()} (seeds pooled)", "zeroline": True})
    return _layout(fig, f"{task}: per-query {metric.upper()} spread")


def removal_figure(rows: list[dict[str, Any]], task: str) -> Any:
    """Top-k removal's curves (``gt.kind=removal``): per row, the query's mean loss rise (seeds averaged)
    against the share of the attribution set removed."""
    go = _go()
    fig = go.Figure()
    for i, row in enumerate(rows):
        curves = [e.record.metrics["removal"]["details"]["curve"] for e in row["entries"]]
        xs = list(curves[0])
        ys = [sum(c[x] for c in curves) / len(curves) for x in xs]
        fig.add_trace(go.Scatter(x=[100 * float(x) for x in xs], y=ys, mode="lines+markers", name=_name(row),
                                 line={"color": COLORS[i % len(COLORS)]}, legendgroup=row["ground_truth"],
                                 hovertemplate=_hover(row) + "<br>k = %{x:g} % of n: rise %{y:.3f}<extra></extra>"))
    fig.update_layout(xaxis={"title_text": "top-k helpful examples removed (% of the attribution set)"},
                      yaxis={"title_text": "mean rise of the query's loss (retrained)", "zeroline": True})
    return _layout(fig, f"{task}: loss rise after removing each query's top-k helpful examples")


def _layout(fig: Any, title: str) -> Any:
    fig.update_layout(template="plotly_white", title={"text": title, "font": {"size": 14}}, height=460,
                      margin={"l": 60, "r": 20, "t": 50, "b": 40}, hoverlabel={"align": "left"},
                      legend={"title_text": "ground truth", "font": {"size": 10}})
    return fig
