"""The HTML report of an evaluation: one self-contained file that opens without a server.

Images are embedded as base64 ``data:`` URIs, the style sheet is inline, and there is no
script at all. Every string that comes from data, models or the run file (names,
class labels, parameters, paths) is HTML-escaped, so a label like ``<script>`` is shown
as text and never run.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .85rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
figure { display: inline-block; margin: .5rem; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #eee; }
figcaption { font-size: .8rem; color: #555; max-width: 560px; }
pre { background: #f7f7f7; padding: .75rem; overflow-x: auto; font-size: .8rem; }
.scroll { overflow-x: auto; }
.meta { color: #666; font-size: .85rem; }
"""

#: the columns of the summary table: (summary key, heading)
SUMMARY_COLUMNS = (
    ("model", "model"), ("defense", "defense"), ("attack", "attack"), ("targets", "targets"), ("rows", "rows"),
    ("clean_accuracy", "clean acc."), ("adversarial_accuracy", "adv. acc."), ("success_rate", "success"),
    ("l0_mean", "L0 mean"), ("l0_mean_success", "L0 mean (success)"), ("l0_median_success", "L0 median (success)"),
    ("l2_mean", "L2 mean"), ("l2_mean_success", "L2 mean (success)"), ("l2_median_success", "L2 median (success)"),
    ("linf_mean", "Linf mean"), ("linf_mean_success", "Linf mean (success)"),
    ("linf_median_success", "Linf median (success)"), ("iterations_mean", "iterations"),
    ("seconds", "seconds"), ("throughput", "rows/s"),
)


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes included, for attributes too)."""
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<td class="text">&ndash;</td>'
    if isinstance(value, bool):
        return f'<td class="text">{"yes" if value else "no"}</td>'
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    if isinstance(value, int):
        return f"<td>{value}</td>"
    if isinstance(value, (dict, list)):
        value = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else ", ".join(map(str, value))
    return f'<td class="text">{esc(value)}</td>'


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], css_id: str | None = None) -> str:
    """An HTML table of ``rows`` with the given ``(key, heading)`` columns, every cell escaped."""
    ident = f' id="{esc(css_id)}"' if css_id else ""
    head = "".join(f'<th class="text">{esc(h)}</th>' for _, h in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(k)) for k, _ in columns) + "</tr>\n" for r in rows)
    return (f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>\n{body}'
            "</tbody></table></div>\n")


def embed_png(path: Path) -> str:
    """A ``data:`` URI holding the PNG at ``path``."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(summary: dict[str, Any], folder: Path) -> str:
    """The report's HTML for a ``summary.json`` payload whose figures lie under ``folder``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>salmap evaluation: {esc(summary.get('name', ''))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>salmap evaluation: {esc(summary.get('name', ''))}</h1>",
        f'<p class="meta">fingerprint {esc(summary.get("fingerprint", ""))}; '
        f'{esc(summary.get("samples", ""))} samples of {esc((summary.get("data") or {}).get("name", ""))} '
        f'({esc((summary.get("data") or {}).get("split", ""))}); schema version {esc(summary.get("schema_version", ""))}; '
        f"written {esc(datetime.datetime.now().isoformat(timespec='seconds'))}</p>",
        *_attack_sections(summary),
        "<h2>Models</h2>",
        table(summary.get("models", []), (("name", "model"), ("defense", "defense"), ("path", "checkpoint"),
                                          ("clean_accuracy", "clean accuracy")), "models"),
    ]
    if summary.get("explanations"):
        parts += ["<h2>Explanations</h2>", table(summary["explanations"], (
            ("model", "model"), ("explainer", "explainer"), ("samples", "samples"), ("seconds", "seconds")),
            "explanations")]
    figures = summary.get("figures") or []
    if figures:
        parts.append("<h2>Figures</h2>")
        for fig in figures:
            path = folder / fig["file"]
            if not path.is_file():
                continue
            parts.append(f'<figure><img src="{embed_png(path)}" alt="{esc(fig["title"])}">'
                         f"<figcaption>{esc(fig['title'])}</figcaption></figure>")
    timings = summary.get("timings") or {}
    parts += ["<h2>Timings</h2>", table([timings], [(k, k) for k in timings], "timings")]
    version_rows = [{"package": k, "version": v} for k, v in (summary.get("versions") or {}).items()]
    parts += ["<h2>Versions</h2>", table(version_rows, (("package", "package"), ("version", "version")), "versions")]
    settings = yaml.safe_dump(summary.get("settings") or {}, sort_keys=False, allow_unicode=True)
    parts += ["<h2>Settings</h2>", f"<pre>{esc(settings)}</pre>", "</body></html>", ""]
    return "\n".join(parts)


def _attack_sections(summary: dict[str, Any]) -> list[str]:
    """The robust accuracy and the per-attack summary; one line for a run that only explains."""
    if not summary.get("results") and not summary.get("robustness"):
        return ["<h2>Attacks</h2>", '<p id="no-attacks">This run has no attacks: it explains the models only.</p>']
    return [
        "<h2>Robust accuracy</h2>",
        "<p>Accuracy under the per-sample worst case of every attack of the run: a sample counts only if "
        "it is classified correctly clean and after every attack (every target included).</p>",
        table(summary.get("robustness", []), (("model", "model"), ("defense", "defense"),
                                              ("clean_accuracy", "clean accuracy"),
                                              ("robust_accuracy", "robust accuracy"), ("attacks", "attacks"),
                                              ("samples", "samples")), "robustness"),
        "<h2>Summary</h2>",
        "<p>Means and medians of distortions are over all rows, and over the successful rows where marked "
        "(success); adversarial accuracy is the fraction of rows still classified as the true class.</p>",
        table(summary.get("results", []), SUMMARY_COLUMNS, "summary"),
    ]


def write_report(path: str | Path, summary: dict[str, Any], folder: str | Path) -> Path:
    """Write the self-contained HTML report of ``summary`` (figures read from ``folder``) to ``path``."""
    from salmap.evaluation.store import atomic_write

    path = Path(path)
    atomic_write(path, render(summary, Path(folder)).encode("utf-8"))
    return path


__all__ = ["SUMMARY_COLUMNS", "embed_png", "esc", "render", "table", "write_report"]
