"""Pool held-out records of disjoint query splits into one out-of-fold summary.

Each record is a ``heldout_eval.py --json`` file with per-query nDCG@10. Their query sets
must not overlap (each split holds out its own queries). For every figure present in all
records, the summary gives its mean over the pooled queries, and for each but the first
stage, against the first stage: the queries won, tied and lost and a paired bootstrap 95%
interval of the mean difference:

    python examples/fold_summary.py examples/results/heldout-default-per-query.json \
        examples/results/heldout-fold1-last.json --json runs/out-of-fold.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BASELINE = "first_stage"
TIE = 1e-9
"""Per-query differences at most this large count as ties."""


def pool(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-query values of the figures every record has, over all records' queries."""
    figures = set.intersection(*(set(r.get("per_query", {})) for r in records))
    if BASELINE not in figures:
        raise SystemExit(f"every record needs per-query {BASELINE!r} (rerun heldout_eval.py)")
    pooled: dict[str, dict[str, float]] = {name: {} for name in sorted(figures)}
    for record in records:
        queries = set(record["per_query"][BASELINE])
        overlap = queries & set(pooled[BASELINE])
        if overlap:
            raise SystemExit(f"query sets overlap: {sorted(overlap)}")
        for name in figures:
            values = record["per_query"][name]
            if set(values) != queries:
                raise SystemExit(f"{name!r} does not cover the record's queries")
            pooled[name].update(values)
    return pooled


def compare(
    values: Mapping[str, float], baseline: Mapping[str, float], resamples: int, seed: int
) -> dict[str, Any]:
    """Wins, ties and losses against ``baseline`` and a paired bootstrap 95% interval."""
    queries = sorted(values)
    diff = np.array([values[q] - baseline[q] for q in queries])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {
        "mean_difference": float(diff.mean()),
        "interval_95": [float(low), float(high)],
        "wins": int((diff > TIE).sum()),
        "ties": int((np.abs(diff) <= TIE).sum()),
        "losses": int((diff < -TIE).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", type=Path, help="heldout_eval.py JSON files")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    records = [json.loads(path.read_text()) for path in args.records]
    pooled = pool(records)
    summary: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "records": [str(path) for path in args.records],
        "models": [record.get("model") for record in records],
        "queries": len(pooled[BASELINE]),
        "mean": {name: float(np.mean(list(v.values()))) for name, v in pooled.items()},
        "against_first_stage": {
            name: compare(values, pooled[BASELINE], args.resamples, args.seed)
            for name, values in pooled.items()
            if name != BASELINE
        },
    }
    args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
