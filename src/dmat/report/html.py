"""The report as one self-contained HTML page: its template, with every figure embedded as a base64 PNG (so the one
file opens anywhere, including the MLflow UI's artifact viewer) and also written to figures/<name>.png."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime
from pathlib import Path

import matplotlib.pyplot as plt

from dmat import tracking
from dmat.report.query import Study
from dmat.report.sections import TITLES, Section


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_html(path: Path, study: Study, sections: list[Section]) -> None:
    """Self-contained HTML; each figure is also written to figures/<name>.png."""
    (path.parent / "figures").mkdir(parents=True, exist_ok=True)
    body = []
    for section in sections:
        body.append(f'<h2 id="{section.key}">{html.escape(TITLES[section.key])}</h2>')
        body += [f"<p class=note>{html.escape(note)}</p>" for note in section.notes]
        if section.items:
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in section.items) + "</ul>")
        body += [t.to_html(index=False, na_rep="n/a", border=0, classes="table") for t in section.tables]
        for name, fig in section.figures:
            png = _png(fig)
            (path.parent / "figures" / f"{name}.png").write_bytes(png)
            body.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    toc = " · ".join(f'<a href="#{s.key}">{html.escape(TITLES[s.key])}</a>' for s in sections)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dmat report: {html.escape(study.experiment)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}
.note{{color:#555}}</style></head><body>
<h1>How model size changes a diffusion model: {html.escape(study.experiment)}</h1>
<p class=note>tracking store {html.escape(tracking.tracking_uri())}; generated {datetime.now():%Y-%m-%d %H:%M:%S};
{len(study.models)} model runs, {len(study.evaluations)} evaluations, {len(study.problems)} problems</p>
<p>{toc}</p>
{chr(10).join(body)}
</body></html>
""", encoding="utf-8")
