"""Print a benchmark result (a dict) as tables a person can read."""

from __future__ import annotations

from typing import Any


def _table(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    cells = [cols] + [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_result(res: dict[str, Any]) -> None:
    print(f"\n== {res.get('name', 'benchmark')}")
    if res.get("rows"):
        print(_table(res["rows"]))
    for k, v in res.items():
        if k in ("name", "rows", "goals"):
            continue
        if isinstance(v, float):
            v = f"{v:.4g}"
        if isinstance(v, (str, int, float)):
            print(f"{k}: {v}")
    goals = res.get("goals") or {}
    if goals:
        print(_table([{"goal": g, "measured": d.get("measured"), "met": "yes" if d.get("met") else "NO"}
                      for g, d in goals.items()]))
