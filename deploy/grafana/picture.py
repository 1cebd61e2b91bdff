"""Draw the stepcare overview dashboard as a PNG from a Prometheus's data, without Grafana.

Every panel's queries are evaluated with ``/api/v1/query_range`` (Grafana's macros substituted
as Grafana would) and drawn where the dashboard puts the panel.

    .venv/bin/python deploy/grafana/picture.py --prometheus http://127.0.0.1:9090 \\
        --last 15m --out stepcare-overview.png                  # any running Prometheus
    .venv/bin/python deploy/grafana/picture.py --prometheus http://127.0.0.1:9090 \\
        --start 2026-01-05T10:00:00Z --end 2026-01-05T10:05:00Z --scrape-interval 1s --out x.png

``docs/img/stepcare-overview.png`` comes from a real run (a broker, a worker, a Prometheus
scraping it every second, the 60-patient demo cohort), made by the live dashboard test:

    STEPCARE_DASHBOARD_PICTURE=docs/img/stepcare-overview.png \\
        .venv/bin/pytest tests/integration/test_dashboard_live.py -q
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "stepcare-overview.json"
MAX_POINTS = 200  # data points per series, as a Grafana panel about that many pixels wide
WIDTH = 20  # inches: the picture's width

# $name, ${name} and ${name:format}: Grafana's macros ($__rate_interval) and the dashboard's
# variables ($job, $instance).
_MACRO = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
# The dashboard's variables as Grafana substitutes them with "All" selected: a regex of every
# value (any value here; the panels' matchers keep the job names they need).
ALL = {"job": ".+", "instance": ".+"}


# -- the dashboard ------------------------------------------------------------------------------


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(Path(path).read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows included, top to bottom and left to right (nested rows flattened)."""
    found: list[dict] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return sorted(found, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


def targets(dashboard: dict) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the dashboard."""
    return [(panel, target) for panel in panels(dashboard) for target in panel.get("targets", [])]


def duration(seconds: float) -> str:
    """A PromQL duration: whole seconds, at least 1s."""
    return f"{max(1, math.ceil(seconds))}s"


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 15s, 5m, 1h)")
    return float(match[1]) * units[match[2]]


def rate_interval(interval: float, scrape_interval: float) -> float:
    """Grafana's ``$__rate_interval``: max($__interval + scrape interval, 4 x scrape interval)."""
    return max(interval + scrape_interval, 4 * scrape_interval)


def substitute(
    expr: str,
    *,
    interval: float,
    rate_interval: float,
    range_: float,
    variables: dict[str, str] | None = None,
) -> str:
    """``expr`` with Grafana's macros replaced by the given durations (seconds) and the
    dashboard's variables by ``variables`` (default: "All", :data:`ALL`)."""
    values = {
        "__interval": duration(interval),
        "__interval_ms": str(max(1, math.ceil(interval * 1000))),
        "__rate_interval": duration(rate_interval),
        "__range": duration(range_),
        "__range_s": str(max(1, math.ceil(range_))),
        "__range_ms": str(max(1, math.ceil(range_ * 1000))),
        **(ALL if variables is None else variables),
    }

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            kind = "Grafana macro" if name.startswith("__") else "dashboard variable"
            raise ValueError(f"unknown {kind} ${name} in {expr!r}")
        return values[name]

    return _MACRO.sub(replace, expr)


# -- Prometheus ---------------------------------------------------------------------------------


class QueryError(Exception):
    """Prometheus answered a query with an error."""


def api(prometheus: str, endpoint: str, **params: object) -> dict:
    """``data`` of a Prometheus HTTP API answer; :class:`QueryError` unless status is success."""
    url = f"{prometheus.rstrip('/')}/api/v1/{endpoint}"
    body = urllib.parse.urlencode({k: str(v) for k, v in params.items()}).encode()
    try:
        with urllib.request.urlopen(url, data=body, timeout=30) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:  # 400/422: a bad query, with a JSON error body
        answer = json.load(exc)
    if answer.get("status") != "success":
        raise QueryError(f"{answer.get('errorType')}: {answer.get('error')} ({params})")
    return answer["data"]


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    """An instant query's result (a vector or scalar result as a list of series)."""
    data = api(prometheus, "query", query=expr, **({} if at is None else {"time": at}))
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    return api(prometheus, "query_range", query=expr, start=start, end=end, step=step)["result"]


def legend(target: dict, metric: dict[str, str]) -> str:
    """The series' name in the panel, from the target's legendFormat (``{{label}}``)."""
    form = target.get("legendFormat") or ""
    if not form or form == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()))
        return f"{metric.get('__name__', '')}{{{inner}}}" if inner else target.get("expr", "")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m[1], ""), form)


def panel_data(
    prometheus: str,
    dashboard: dict,
    start: float,
    end: float,
    scrape_interval: float,
    variables: dict[str, str] | None = None,
) -> dict[int, list[tuple[str, list[float], list[float]]]]:
    """For each panel id: (legend, times, values) of every series its queries return."""
    step = max(scrape_interval, (end - start) / MAX_POINTS)
    interval = rate_interval(step, scrape_interval)
    data: dict[int, list[tuple[str, list[float], list[float]]]] = {}
    for panel, target in targets(dashboard):
        expr = substitute(
            target["expr"],
            interval=step,
            rate_interval=interval,
            range_=end - start,
            variables=variables,
        )
        series = data.setdefault(panel["id"], [])
        for result in query_range(prometheus, expr, start, end, step):
            times = [float(t) for t, _ in result["values"]]
            values = [float(v) for _, v in result["values"]]
            series.append((legend(target, result["metric"]), times, values))
    return data


# -- drawing ------------------------------------------------------------------------------------

BACKGROUND, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e8e", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#705da0", "#37872d", "#fade2a"]  # fmt: skip
COLORS = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "blue": "#5794f2",
          "yellow": "#fade2a"}  # fmt: skip


def formatted(value: float, unit: str) -> str:
    """A value the way the panel's unit shows it (s, ops, short, percentunit)."""
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s":
        for size, name in ((86400, "day"), (3600, "h"), (60, "min")):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.3g} s"
    suffix = " ops/s" if unit == "ops" else ""
    for size, name in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.3g}{name}{suffix}"
    if value == int(value):
        return f"{int(value)}{suffix}"
    return f"{value:.3g}{suffix}"


def threshold_color(panel: dict, value: float) -> str:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps")
    color = "green"
    for step in steps or []:
        if step.get("value") is None or value >= step["value"]:
            color = step["color"]
    return COLORS.get(color, color)


def draw(
    dashboard: dict, data: dict, start: float, end: float, out: Path, subtitle: str = ""
) -> None:
    """The dashboard's panels, at their grid positions, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = panels(dashboard)
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in every)
    figure = plt.figure(figsize=(WIDTH, height * 0.42), facecolor=BACKGROUND)
    grid = figure.add_gridspec(
        height, 24, hspace=0.5, wspace=0.5, left=0.01, right=0.99, top=0.95, bottom=0.01
    )
    title = dashboard["title"] + (f"  ·  {subtitle}" if subtitle else "")
    figure.suptitle(title, color=TEXT, fontsize=15, x=0.01, ha="left")
    span = (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    for panel in every:
        pos = panel["gridPos"]
        rows, columns = slice(pos["y"], pos["y"] + pos["h"]), slice(pos["x"], pos["x"] + pos["w"])
        frame = figure.add_subplot(grid[rows, columns])
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_visible(False)
        if panel["type"] == "row":
            frame.set_facecolor(BACKGROUND)
            frame.text(0, 0.2, panel["title"], color=TEXT, fontsize=12, weight="bold")
            continue
        frame.set_facecolor(PANEL)
        frame.text(0.01, 0.96, panel["title"], color=TEXT, fontsize=10, va="top",
                   transform=frame.transAxes)  # fmt: skip
        series = [s for s in data.get(panel["id"], []) if s[1]]
        if not series:
            frame.text(0.5, 0.45, "No data", color=MUTED, ha="center", transform=frame.transAxes)
        elif panel["type"] == "stat":
            _stat(frame.inset_axes((0, 0, 1, 0.78)), panel, series[0], span)
        else:
            inches = WIDTH * 0.98 * pos["w"] / 24  # the panel's width
            left = 0.8 / inches
            axes = frame.inset_axes((left, 0.12, 0.72 - left, 0.72))
            _timeseries(axes, panel, series, span)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80, facecolor=BACKGROUND)
    plt.close(figure)


def _unit(panel: dict) -> str:
    return panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")


def _stat(axes, panel: dict, series: tuple, span: tuple) -> None:
    """The last value, big, in its threshold's color, over a faint sparkline."""
    _, times, values = series
    color = threshold_color(panel, values[-1])
    moments = [datetime.fromtimestamp(t, UTC) for t in times]
    axes.set_facecolor(PANEL)
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.fill_between(moments, values, color=color, alpha=0.15, linewidth=0)
    text = formatted(values[-1], _unit(panel))
    axes.text(0.5, 0.45, text, color=color, fontsize=22, weight="bold", ha="center",
              va="center", transform=axes.transAxes)  # fmt: skip
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_xlim(*span)
    axes.set_ylim(bottom=min(0.0, *values))


def _timeseries(axes, panel: dict, series: list[tuple], span: tuple) -> None:
    """Lines over the time range, the legend to their right (Grafana's "right" placement)."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axes.set_facecolor(PANEL)
    for spine in axes.spines.values():
        spine.set_visible(False)
    for index, (name, times, values) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        moments = [datetime.fromtimestamp(t, UTC) for t in times]
        axes.plot(moments, values, color=color, linewidth=1.3, label=name)
        axes.fill_between(moments, values, color=color, alpha=0.08, linewidth=0)
    unit = _unit(panel)
    axes.set_xlim(*span)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    axes.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: formatted(v, unit)))
    axes.yaxis.set_major_locator(MaxNLocator(nbins=4))
    if panel.get("fieldConfig", {}).get("defaults", {}).get("min") == 0:
        axes.set_ylim(bottom=0)
    axes.tick_params(colors=MUTED, labelsize=7, length=0)
    axes.grid(color=GRID, linewidth=0.5)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
                labelcolor=TEXT, handlelength=1.2, borderaxespad=0)  # fmt: skip


def render(
    prometheus: str,
    start: float,
    end: float,
    out: Path,
    *,
    scrape_interval: float = 15.0,
    dashboard: dict | None = None,
    variables: dict[str, str] | None = None,
) -> None:
    """Evaluate every panel over [start, end] and draw the dashboard into ``out``."""
    dashboard = load_dashboard() if dashboard is None else dashboard
    data = panel_data(prometheus, dashboard, start, end, scrape_interval, variables)
    span = f"{_utc(start)} - {_utc(end)} UTC"
    draw(dashboard, data, start, end, out, subtitle=span)


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="base URL")
    parser.add_argument("--last", default="15m", help="range ending now (default 15m)")
    parser.add_argument("--start", help="ISO-8601 start (instead of --last)")
    parser.add_argument("--end", help="ISO-8601 end (default now)")
    parser.add_argument("--scrape-interval", default="15s", help="Prometheus's (default 15s)")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=REGEX",
        help="a dashboard variable, e.g. --var instance=worker-1:6066 (default: all values)",
    )
    args = parser.parse_args(argv)
    variables = dict(ALL)
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or name not in ALL:
            parser.error(f"--var {item}: NAME=REGEX with NAME one of {', '.join(ALL)}")
        variables[name] = value
    end = _moment(args.end) if args.end else time.time()
    start = _moment(args.start) if args.start else end - parse_duration(args.last)
    if start >= end:
        parser.error("the range is empty: start must be before end")
    try:
        render(
            args.prometheus,
            start,
            end,
            args.out,
            scrape_interval=parse_duration(args.scrape_interval),
            dashboard=load_dashboard(args.dashboard),
            variables=variables,
        )
    except (QueryError, OSError) as exc:
        print(f"picture: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
