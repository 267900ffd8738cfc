"""Run benchmarks: `python -m tests.bench [NAME ...] [--quick]`.

Each benchmark module ``tests/bench/bench_<name>.py`` has ``run(args) -> dict``; the runner prints each
result as a table and writes it to ``bench-results/<name>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
import time
from pathlib import Path

from tests.bench.report import print_result

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench")
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(available())}")
    ap.add_argument("--n", type=int, default=None, help="object count override (smaller = quicker)")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)
    names = args.names or available()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    rc = 0
    for name in names:
        mod = importlib.import_module(f"tests.bench.bench_{name}")
        t0 = time.time()
        try:
            res = mod.run(args)
        except Exception as e:  # a failed benchmark is reported, the others still run
            print(f"\n== {name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
            continue
        res.setdefault("name", name)
        res["_meta"] = {"python": platform.python_version(), "machine": platform.machine(),
                        "kernel": platform.release(), "seconds": round(time.time() - t0, 2),
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print_result(res)
        (out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main())
