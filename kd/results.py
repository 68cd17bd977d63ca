"""One results table per invocation: ``results.md`` (readable) and ``results.json`` (every
row, the arguments and library versions), written atomically into the run's folder."""
from __future__ import annotations

import json
import os
from typing import List, Optional

from engine.utils import library_versions

COLUMNS = ("method", "stage", "teacher", "teacher_top1", "student", "last_top1", "best_top1", "epochs", "time_total")


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def format_table(rows: List[dict]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    extra = sorted({k for r in rows for k in r if k.startswith("top1_")})
    cols += extra
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_results(save_dir: str, rows: List[dict], args: dict, logger=None, title: Optional[str] = None) -> dict:
    """Write ``results.md`` and ``results.json`` (rank 0 alone under torchrun); returns the JSON object."""
    from engine.distributed import is_main

    table = format_table(rows)
    best = max((r for r in rows if r.get("best_top1") is not None), key=lambda r: r["best_top1"], default=None)
    header = title or f"Results ({len(rows)} run{'s' * (len(rows) != 1)})"
    text = f"# {header}\n\nTop-1 (%) on the test split: last epoch and best epoch.\n\n{table}\n"
    if best is not None and len(rows) > 1:
        text += f"\nBest: {best['method']} {best.get('stage') or ''} {best['best_top1']:.2f}\n".replace("  ", " ")
    summary = {"rows": rows, "best": best, "args": args, "versions": library_versions()}
    for name, payload in (("results.md", text), ("results.json", json.dumps(summary, indent=2, default=str))):
        if not is_main():
            break
        os.makedirs(save_dir, exist_ok=True)
        tmp = os.path.join(save_dir, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(payload)
        os.replace(tmp, os.path.join(save_dir, name))
    if logger is not None:
        logger.info("\n" + table)
        logger.info(f"results: {os.path.join(save_dir, 'results.md')}")
    return summary
