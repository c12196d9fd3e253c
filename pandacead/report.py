"""`pandacead report`: one self-contained HTML page of privacy spent over time and per-job curves.

For the earner (it reads the ledger and state/history/, and shows training
loss, which is not a DP release): it is written where the admin says, never
into the outbox. The page loads nothing: no script, no font, no CDN; every
chart is an inline SVG drawn here, and a Content-Security-Policy forbids any
fetch, so a page opened offline looks exactly like one opened online.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
MAX_JOBS = 200  # per-job sections on one page, newest first


def parse_time(text: Any) -> float | None:
    """A ledger timestamp (ISO 8601, UTC) as a POSIX time, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- data -------------------------------------------------------------------------


def _history(settings: Any, row_id: int) -> list[dict[str, Any]]:
    from pandacead.pipeline import history_path

    try:
        lines = history_path(settings, row_id).read_text("utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _cumulative(ledger: Any, spends: list[dict[str, Any]], eps_budget: float, delta_budget: float) -> list[dict[str, Any]]:
    """(time, ε spent, δ spent) after each committed spend, under the ledger's composition mode."""
    from pandacead.accounting import Spend, summarize

    points: list[dict[str, Any]] = []
    acc: list[Any] = []
    for sp in spends:
        if sp["state"] != "committed":
            continue
        acc.append(Spend(epsilon=sp["epsilon"], delta=sp["delta"], rdp=sp.get("rdp"),
                         mode=sp.get("composition") or "basic", reserved=False))
        try:
            s = summarize(acc, eps_budget, delta_budget, ledger.composition, ledger.approx_delta_share)
            e, d = s.epsilon_spent, s.delta_spent
        except ValueError:
            e = sum(x.epsilon for x in acc)
            d = sum(x.delta for x in acc)
        t = parse_time(sp.get("settled_at")) or parse_time(sp.get("reserved_at"))
        if t is not None:
            points.append({"t": t, "epsilon": e, "delta": d, "job_id": sp["job_id"]})
    return points


def collect(settings: Any) -> dict[str, Any]:
    """Everything the page shows, as JSON-able data (also `pandacead report --json`)."""
    from pandacead.ledger import Ledger

    led = Ledger.from_settings(settings, actor="report")
    try:
        jobs = led.jobs(None)
        spends = led.spends()
        budgets = {b.user_id: b for b in led.budgets()}
        composition = led.composition
        datasets_of: dict[str, str] = {}
        job_sections = []
        for row in jobs[:MAX_JOBS]:
            hist = _history(settings, row["id"])
            meta = next((h for h in hist if h.get("type") == "job"), {})
            art = None
            if row["status"] == "succeeded":
                try:
                    art = json.loads((Path(settings.outbox) / f"{row['job_id']}.json").read_text("utf-8"))
                except (OSError, ValueError):
                    art = None
            dataset = (art or {}).get("dataset") or meta.get("dataset")
            if dataset and row["status"] == "succeeded":
                datasets_of.setdefault(row["job_id"], dataset)
            elif dataset:
                datasets_of.setdefault(row["job_id"], dataset)
            t0 = meta.get("at")
            curve = [
                {"epoch": h["epoch"], "loss": h.get("loss"), "epsilon": h.get("epsilon"),
                 "t": (h["at"] - t0) if t0 else None}
                for h in hist if h.get("type") == "progress" and h.get("epoch") is not None
            ]
            job_sections.append({
                "job_id": row["job_id"], "account": row.get("user_id"), "status": row["status"],
                "backend": row.get("backend"), "dataset": dataset, "epsilon": row.get("epsilon"),
                "delta": row.get("delta"), "error": row.get("error"), "created_at": row.get("created_at"),
                "updated_at": row.get("updated_at"),
                "metrics": (art or {}).get("metrics") or (
                    {"accuracy": art["accuracy"]} if art and art.get("accuracy") is not None else None),
                "parameters": {k: meta.get(k) for k in ("epochs", "batch_size", "learning_rate", "model", "hidden",
                                                        "noise_multiplier", "sample_rate", "steps", "epsilon_planned",
                                                        "epsilon_requested", "delta") if k in meta},
                "curve": curve,
            })
        accounts = []
        for uid in sorted({s["user_id"] for s in spends} | set(budgets)):
            b = budgets.get(uid)
            eb = b.epsilon_budget if b else float(settings.budget.get("default_epsilon", 10.0))
            db = b.delta_budget if b else float(settings.budget.get("default_delta", 1e-3))
            mine = [s for s in spends if s["user_id"] == uid]
            accounts.append({"id": uid, "epsilon_budget": eb, "delta_budget": db,
                             "points": _cumulative(led, mine, eb, db),
                             "reserved": sum(s["epsilon_reserved"] for s in mine if s["state"] == "reserved")})
        by_dataset: dict[str, list[dict[str, Any]]] = {}
        for sp in spends:
            by_dataset.setdefault(datasets_of.get(sp["job_id"], "(unknown dataset)"), []).append(sp)
        datasets = []
        for name in sorted(by_dataset):
            datasets.append({"id": name, "epsilon_budget": None, "delta_budget": None,
                             "points": _cumulative(led, by_dataset[name], 1e9, 1.0 - 1e-9),
                             "accounts": sorted({s["user_id"] for s in by_dataset[name]})})
    finally:
        led.close()
    t_now = datetime.now(timezone.utc).timestamp()
    return {"home": str(settings.home), "generated_at": _iso(t_now) + " UTC", "generated_t": t_now,
            "composition": composition, "accounts": accounts, "datasets": datasets, "jobs": job_sections}


# -- drawing ------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.1e}"
    return f"{v:.4g}"


def svg_chart(
    series: list[dict[str, Any]], *, title: str, chart_id: str, x_label: str, y_label: str,
    budget: float | None = None, step: bool = False, x_time: bool = False, width: int = 560, height: int = 260,
    until: float | None = None, empty: str = "no data yet", budget_label: str = "budget",
) -> str:
    """A line (or step) chart as an inline SVG. series: [{"label", "points": [(x, y), ...]}].

    A step chart (a running total) is held at its last value up to `until` (the page's time)."""
    left, right, top, bottom = 62, 16, 30, 44
    pw, ph = width - left - right, height - top - bottom
    xs = [x for s in series for x, y in s["points"] if y is not None]
    if xs and until is not None and until > max(xs):
        xs.append(until)
    ys = [y for s in series for x, y in s["points"] if y is not None]
    if budget is not None and math.isfinite(budget):
        ys.append(budget)
    esc = html.escape
    parts = [f'<svg class="chart" data-chart="{esc(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<title>{esc(title)}</title>',
             f'<text x="{left}" y="18" class="ct">{esc(title)}</text>']
    if not xs:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">{esc(empty)}</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.08 if max(ys) > 0 else 1.0

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>')
    for t in _nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    xticks = _nice_ticks(x0, x1, 4) if not x_time else [x0 + (x1 - x0) * i / 3 for i in range(4)]
    tfmt = "%H:%M:%S" if x1 - x0 < 3600 else ("%m-%d %H:%M" if x1 - x0 < 4 * 86400 else "%Y-%m-%d")
    for n, t in enumerate(xticks):
        label = datetime.fromtimestamp(t, timezone.utc).strftime(tfmt) if x_time else _fmt(t)
        anchor = "start" if n == 0 and x_time else ("end" if n == len(xticks) - 1 and x_time else "middle")
        parts.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="{anchor}" class="tick">{label}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">{esc(x_label)}</text>'
                 f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" text-anchor="middle" class="axis">{esc(y_label)}</text>')
    if budget is not None and math.isfinite(budget):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(budget):.1f}" y2="{sy(budget):.1f}" class="budget"/>'
                     f'<text x="{left + pw - 4}" y="{sy(budget) - 5:.1f}" text-anchor="end" class="blabel">{esc(budget_label)} {_fmt(budget)}</text>')
    for i, s in enumerate(series):
        pts = [(x, y) for x, y in s["points"] if y is not None]
        if not pts:
            continue
        color = COLORS[i % len(COLORS)]
        coords: list[str] = []
        prev_y = 0.0 if step else None
        for x, y in pts:
            if step and prev_y is not None:
                coords.append(f"{sx(x):.1f},{sy(prev_y):.1f}")
            coords.append(f"{sx(x):.1f},{sy(y):.1f}")
            prev_y = y
        if step:
            coords.insert(0, f"{sx(pts[0][0]):.1f},{sy(0):.1f}")
            if until is not None and until > pts[-1][0]:
                coords.append(f"{sx(until):.1f},{sy(pts[-1][1]):.1f}")
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(coords)}" class="series"/>')
        for x, y in pts[-60:]:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>')
        # the legend sits under the plot's top edge on the right, clear of the budget line's label
        ly = top + ph - 12 - 16 * (len(series) - 1 - i)
        parts.append(f'<rect x="{left + pw - 170}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + pw - 156}" y="{ly}" class="legend">{esc(s["label"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#666}.grid-wrap{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px 12px}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
.ok{color:#2a7d2a}.bad{color:#b02a2a}.ct{font-weight:600;font-size:13px}.tick{font-size:11px;fill:#555}
.axis{font-size:12px;fill:#333}.legend{font-size:12px;fill:#333}.plot{fill:#fff;stroke:#bbb}
.grid{stroke:#eee}.budget{stroke:#b02a2a;stroke-dasharray:6 4;stroke-width:1.5}.blabel{font-size:11px;fill:#b02a2a}
.empty{fill:#999;font-size:13px}
"""


def render(data: dict[str, Any]) -> str:
    esc = html.escape
    until = data.get("generated_t")
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
           f"<title>pandacead report — {esc(data['home'])}</title><style>{CSS}</style></head><body>",
           "<h1>pandacead: privacy spent and jobs</h1>",
           f"<p class=\"meta\">home {esc(data['home'])} · composition {esc(data['composition'])} · generated {esc(data['generated_at'])}"
           f" · {len(data['jobs'])} job(s)</p>"]
    out.append("<h2>Per account: ε and δ spent over time, against the budget</h2><div class=\"grid-wrap\">")
    if not data["accounts"]:
        out.append("<p>No account has spent anything yet.</p>")
    for a in data["accounts"]:
        pts = a["points"]
        out.append('<div class="card">')
        out.append(svg_chart([{"label": f"ε spent by {a['id']}", "points": [(p["t"], p["epsilon"]) for p in pts]}],
                             title=f"Account {a['id']}: ε", chart_id=f"account-epsilon:{a['id']}", x_label="time (UTC)",
                             y_label="ε", budget=a["epsilon_budget"], step=True, x_time=True, until=until))
        out.append(svg_chart([{"label": f"δ spent by {a['id']}", "points": [(p["t"], p["delta"]) for p in pts]}],
                             title=f"Account {a['id']}: δ", chart_id=f"account-delta:{a['id']}", x_label="time (UTC)",
                             y_label="δ", budget=a["delta_budget"], step=True, x_time=True, height=200, until=until))
        last = pts[-1] if pts else {"epsilon": 0.0, "delta": 0.0}
        out.append(f"<p>spent ε {_fmt(last['epsilon'])} of {_fmt(a['epsilon_budget'])}, δ {_fmt(last['delta'])} of"
                   f" {_fmt(a['delta_budget'])}; reserved now ε {_fmt(a['reserved'])}</p></div>")
    out.append("</div><h2>Per dataset: ε and δ spent over time</h2><div class=\"grid-wrap\">")
    if not data["datasets"]:
        out.append("<p>No dataset has been used yet.</p>")
    for d in data["datasets"]:
        pts = d["points"]
        out.append('<div class="card">')
        out.append(svg_chart([{"label": f"ε spent on {d['id']}", "points": [(p["t"], p["epsilon"]) for p in pts]},
                              {"label": f"δ × 10⁵ on {d['id']}", "points": [(p["t"], p["delta"] * 1e5) for p in pts]}],
                             title=f"Dataset {d['id']}", chart_id=f"dataset:{d['id']}", x_label="time (UTC)",
                             y_label="ε (δ × 10⁵)", budget=d["epsilon_budget"], step=True, x_time=True, until=until))
        out.append(f"<p>accounts: {esc(', '.join(d['accounts']))}"
                   + ("" if d["epsilon_budget"] is not None else " · this ledger keeps no per-dataset budget") + "</p></div>")
    out.append("</div><h2>Per job: loss and ε so far</h2>")
    for j in data["jobs"]:
        ok = j["status"] == "succeeded"
        out.append(f"<h3 id=\"job-{esc(j['job_id'])}\">{esc(j['job_id'])} — <span class=\"{'ok' if ok else 'bad'}\">"
                   f"{esc(j['status'])}</span></h3><div class=\"grid-wrap\"><div class=\"card\">")
        curve = j["curve"]
        empty = "no training: refused before it ran" if j["status"] == "rejected" else "no progress recorded"
        out.append(svg_chart([{"label": "training loss", "points": [(c["epoch"], c["loss"]) for c in curve]}],
                             title=f"{j['job_id']}: loss", chart_id=f"job-loss:{j['job_id']}", x_label="epoch",
                             y_label="loss", width=420, height=220, empty=empty))
        out.append("</div><div class=\"card\">")
        out.append(svg_chart([{"label": "ε so far", "points": [(c["epoch"], c["epsilon"]) for c in curve]}],
                             title=f"{j['job_id']}: ε so far", chart_id=f"job-epsilon:{j['job_id']}", x_label="epoch",
                             y_label="ε", budget=j["parameters"].get("epsilon_planned"), width=420, height=220, empty=empty,
                             budget_label="planned ε"))
        rows = [("account", j["account"]), ("dataset", j["dataset"]), ("backend", j["backend"]),
                ("ε", j["epsilon"]), ("δ", j["delta"]), ("started", j["created_at"]), ("updated", j["updated_at"])]
        rows += list(j["parameters"].items())
        rows += [(f"metric {k}", v) for k, v in (j["metrics"] or {}).items()]
        if j["error"]:
            rows.append(("error", j["error"]))
        cells = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(_cellv(v))}</td></tr>" for k, v in rows)
        out.append(f"</div><div class=\"card\"><table>{cells}</table></div></div>")
    out.append("</body></html>\n")
    return "".join(out)


def _cellv(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "-"
    return str(v)


def write(settings: Any, out_dir: Path) -> Path:
    from pandacead.artifacts import publish

    data = collect(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    publish(path, render(data).encode("utf-8"), mode=0o600)
    return path
