"""The report as one self-contained HTML page: its template, with every figure embedded as a base64 PNG (so the one
file opens anywhere, including the MLflow UI's artifact viewer) and also written to figures/<name>.png.

Every table the same way (table_html): headers from the metric registry (columns.column_header: "KID ↓",
"Latency per image (ms) ↓", the metric's description as a tooltip), numbers as metrics.format_values shows them
(a `<metric>_ci95` column beside its metric joined into "mean ± interval"), no empty column, and a table wider than
FOLD_COLUMNS behind a fold (<details>) that names it."""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path

import pandas as pd

from dmat import tracking
from dmat.config.metrics import INTERVAL_SUFFIX, format_values, metric_of
from dmat.report.query import Study
from dmat.report.sections import TITLES, Section
from dmat.report.columns import column_header, drop_empty

FOLD_COLUMNS = 9  # a table of more columns is a detail table: folded, a click away


def write_html(path: Path, study: Study, sections: list[Section]) -> None:
    """Self-contained HTML; each figure is also written to figures/<name>.png."""
    (path.parent / "figures").mkdir(parents=True, exist_ok=True)
    body = []
    for section in sections:
        body.append(f'<h2 id="{section.key}">{html.escape(TITLES[section.key])}</h2>')
        body += [f"<p class=note>{html.escape(note)}</p>" for note in section.notes]
        if section.items:
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in section.items) + "</ul>")
        body += [table_html(t) for t in section.tables]
        for name, png in section.figures:
            (path.parent / "figures" / f"{name}.png").write_bytes(png)
            body.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    toc = " · ".join(f'<a href="#{s.key}">{html.escape(TITLES[s.key])}</a>' for s in sections)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dmat report: {html.escape(study.experiment)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}} img{{max-width:100%}}
.scroll{{overflow-x:auto;max-width:100%}} table{{border-collapse:collapse;font-size:13px;margin:.5em 0}}
td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}}
th{{vertical-align:bottom;white-space:normal;max-width:9em}} th[title]{{cursor:help}}
td:first-child,th:first-child{{text-align:left}}
caption{{caption-side:bottom;text-align:left;color:#555;font-size:12px;padding-top:4px}}
details{{margin:.5em 0}} summary{{cursor:pointer;color:#333}} .note{{color:#555}}</style></head><body>
<h1>How model size changes a diffusion model: {html.escape(study.experiment)}</h1>
<p class=note>tracking store {html.escape(tracking.tracking_uri())}; generated {datetime.now():%Y-%m-%d %H:%M:%S};
{len(study.models)} model runs, {len(study.evaluations)} evaluations, {len(study.problems)} problems</p>
<p>{toc}</p>
{chr(10).join(body)}
</body></html>
""", encoding="utf-8")


def table_html(table: pd.DataFrame) -> str:
    """One table as the report shows it (see the module's doc); attrs "title" names a folded table, attrs "caption"
    is said under it."""
    shown = display_frame(table)
    if shown.empty and not len(shown.columns):
        return ""
    head = "\n".join(_th(column) for column in shown.columns)
    rows = "\n".join("<tr>\n" + "\n".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "\n</tr>"
                     for row in shown.itertuples(index=False))
    caption = table.attrs.get("caption")
    markup = (f'<div class=scroll><table>{f"<caption>{html.escape(caption)}</caption>" if caption else ""}\n'
              f"<thead><tr>\n{head}\n</tr></thead>\n<tbody>\n{rows}\n</tbody></table></div>")
    if len(shown.columns) <= FOLD_COLUMNS:
        return markup
    title = table.attrs.get("title") or "Detail table"
    return (f"<details><summary>{html.escape(title)}: {len(shown.columns)} columns, {len(shown)} rows (click to "
            f"show)</summary>{markup}</details>")


def display_frame(table: pd.DataFrame) -> pd.DataFrame:
    """`table` as strings: numbers of a metric column as format_values shows them, with its `<metric>_ci95` beside
    it folded in ("0.244 ± 0.019"); identity numbers plainly (size 0.5, 16 px); NaN as n/a; no empty column."""
    table = drop_empty(table)
    columns = {}
    for column in table.columns:
        values = table[column]
        if column.endswith(INTERVAL_SUFFIX) and column.removesuffix(INTERVAL_SUFFIX) in table.columns:
            continue  # joined into its metric's column
        if metric_of(column) is not None and _is_number(values):
            interval = f"{column}{INTERVAL_SUFFIX}"
            spreads = table[interval] if interval in table.columns and _is_number(table[interval]) else None
            columns[column] = format_values(column, values, spreads)
        elif _is_number(values):
            columns[column] = ["n/a" if pd.isna(v) else f"{v:g}" for v in values]
        else:
            columns[column] = ["n/a" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]
    return pd.DataFrame(columns, index=table.index)


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _th(column: str) -> str:
    metric = metric_of(column)
    title = f' title="{html.escape(metric.measures)}"' if metric is not None else ""
    return f"<th{title}>{html.escape(column_header(column))}</th>"
