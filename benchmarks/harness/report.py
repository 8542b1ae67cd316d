"""Result records and their tables: one JSON-ready dict per benchmark, one markdown table each.

Every benchmark returns the same shape (``benchmark``, ``title``, ``settings``, ``baseline``,
``unit``, ``rows``, ``goals``, ``notes``), so that the CLI, the JSON file and the smoke test treat
them alike and a reader of ``benchmarks/RESULTS.md`` finds the same columns everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from tabulate import tabulate

__all__ = ["MEM_VS_FULL", "STEP_COLUMNS", "Column", "fmt_num", "fmt_ratio", "fmt_stats", "goal",
           "make_result", "render", "render_columns"]

Column = tuple[str, Callable[[dict[str, Any]], str]]


def make_result(benchmark: str, title: str, settings: dict[str, Any], baseline: str, unit: str,
                higher_is_better: bool, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The common result record (goals and notes are appended by the benchmark)."""
    return {
        "benchmark": benchmark,
        "title": title,
        "settings": settings,
        "baseline": baseline,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "rows": rows,
        "goals": [],
        "notes": [],
    }


def goal(name: str, measured: float, op: str, target: float) -> dict[str, Any]:
    """One goal of the issue with its measured value and whether it is met (``op``: <= or >=)."""
    if op not in ("<=", ">="):
        raise ValueError(f"goal: op must be '<=' or '>=', got {op!r}")
    met = measured <= target if op == "<=" else measured >= target
    return {"name": name, "measured": float(measured), "op": op, "target": float(target),
            "met": bool(met)}


def fmt_num(value: float | None, digits: int = 3) -> str:
    """Compact number: 3 significant digits, scientific for very small or large magnitudes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 1e-3 or magnitude >= 1e6:
        return f"{value:.{max(digits - 1, 0)}e}"
    return f"{value:.{digits}g}"


def fmt_stats(stats: dict[str, Any], scale: float = 1.0) -> str:
    """``median [min-max]`` of a :func:`~benchmarks.harness.measure.summarize` record."""
    return (f"{fmt_num(stats['median'] * scale)} "
            f"[{fmt_num(stats['min'] * scale)}-{fmt_num(stats['max'] * scale)}]")


def fmt_ratio(row: dict[str, Any], key: str = "ratio") -> str:
    """``1.02x [0.97-1.05]``: ratio of medians and the range of the paired ratios."""
    if row.get(key) is None:
        return "-"
    return (f"{row[key]:.2f}x [{row[key + '_min']:.2f}-{row[key + '_max']:.2f}]")


def render(result: dict[str, Any], headers: Sequence[str], cells: list[list[str]]) -> str:
    """Title, markdown table, goals (met / MISSED) and notes of one benchmark as text."""
    lines = [f"### {result['title']}", ""]
    lines.append(tabulate(cells, headers=list(headers), tablefmt="github", disable_numparse=True))
    if result["goals"]:
        lines.append("")
        for g in result["goals"]:
            status = "met" if g["met"] else "MISSED"
            lines.append(f"- goal {g['name']}: {fmt_num(g['measured'])} {g['op']} "
                         f"{fmt_num(g['target'])} -> {status}")
    for note in result["notes"]:
        lines.append(f"- note: {note}")
    return "\n".join(lines)


def render_columns(result: dict[str, Any], columns: Sequence[Column]) -> str:
    """`render` from (header, cell of a row) pairs: a header stands next to the code that fills
    its column, so tables cannot get them out of step, and benchmarks share whole columns."""
    cells = [[cell(row) for _, cell in columns] for row in result["rows"]]
    return render(result, [header for header, _ in columns], cells)


# the leading columns of every training-step table (rows of `measure.method_rows`)
STEP_COLUMNS: tuple[Column, ...] = (
    ("method", lambda r: r["label"]),
    ("trainable params", lambda r: f"{r['trainable_params']:,}"),
    ("step s, median [min-max]", lambda r: fmt_stats(r["stats"])),
    ("time vs full", fmt_ratio),
)
MEM_VS_FULL: Column = ("mem vs full", lambda r: f"{r['mem_ratio']:.2f}x")
