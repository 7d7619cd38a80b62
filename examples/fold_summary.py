"""Pool held-out records of disjoint query splits into one out-of-fold summary.

Each record is a ``heldout_eval.py --json`` file with per-query nDCG@10. Their query sets
must not overlap (each split holds out its own queries). For every figure present in all
records, the summary gives its mean over the pooled queries, and for each but the first
stage, against the first stage: the queries won, tied and lost and a paired bootstrap 95%
interval of the mean difference:

    python examples/fold_summary.py examples/results/heldout-default-per-query.json \
        examples/results/heldout-fold1-last.json --json runs/out-of-fold.json

The records must have read their candidates alike (:data:`SETTINGS`); their models may
differ, as each fold trains its own. Records that differ are refused unless
``--allow-mixed``; a setting that some records do not record (older records) cannot be
checked, and is named. So are the figures left out because some records lack them.
``--expect-queries N`` refuses a pool of other than N queries (43: all of DL19 out of fold).
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

from haystack_llmrank.cli.options import existing_file, positive_int

BASELINE = "first_stage"
TIE = 1e-9
"""Per-query differences at most this large count as ties."""
SETTINGS = (
    "strategy",
    "window_size",
    "step",
    "vote",
    "max_passage_words",
    "depth",
    "dtype",
    "order_invariant",
    "both_orders",
)
"""How a ``heldout_eval.py`` record read its candidates: what pooled records must share."""


def figures(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The figures with per-query values in every record, and those only some records have."""
    held = [set(record.get("per_query", {})) for record in records]
    shared = set.intersection(*held)
    return sorted(shared), sorted(set.union(*held) - shared)


def compare_settings(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The :data:`SETTINGS` of ``records`` (by name): ``shared`` (setting: the value all
    records that record it agree on), ``mixed`` (setting: each such record's value, where
    they differ) and ``unrecorded`` (setting: the records that do not record it)."""
    compared: dict[str, dict[str, Any]] = {"shared": {}, "mixed": {}, "unrecorded": {}}
    for setting in SETTINGS:
        values = {name: r[setting] for name, r in records.items() if setting in r}
        lacking = [name for name in records if name not in values]
        if lacking:
            compared["unrecorded"][setting] = lacking
        if len({json.dumps(value) for value in values.values()}) > 1:
            compared["mixed"][setting] = values
        elif values:
            compared["shared"][setting] = next(iter(values.values()))
    return compared


def pool(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-query values of the figures every record has, over all records' queries."""
    shared, _ = figures(records)
    if BASELINE not in shared:
        raise SystemExit(f"every record needs per-query {BASELINE!r} (rerun heldout_eval.py)")
    pooled: dict[str, dict[str, float]] = {name: {} for name in shared}
    for record in records:
        queries = set(record["per_query"][BASELINE])
        overlap = queries & set(pooled[BASELINE])
        if overlap:
            raise SystemExit(f"query sets overlap: {sorted(overlap)}")
        for name in shared:
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


def warn(message: str) -> None:
    """Print ``message`` to stderr, beside the summary on stdout."""
    print(f"fold_summary.py: {message}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", type=existing_file, help="heldout_eval.py JSON files")
    parser.add_argument("--resamples", type=positive_int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--allow-mixed", action="store_true", help="pool records read with different settings"
    )
    parser.add_argument(
        "--expect-queries",
        type=positive_int,
        default=None,
        help="refuse a pool of other than N queries",
    )
    args = parser.parse_args()

    records = [json.loads(path.read_text()) for path in args.records]
    settings = compare_settings(dict(zip(map(str, args.records), records, strict=True)))
    for setting, lacking in settings["unrecorded"].items():
        warn(f"cannot check {setting}: not recorded in {', '.join(lacking)}")
    if settings["mixed"]:
        mixed = "; ".join(f"{setting} {values}" for setting, values in settings["mixed"].items())
        if not args.allow_mixed:
            raise SystemExit(
                f"records read with different settings (--allow-mixed pools them): {mixed}"
            )
        warn(f"pooling records read with different settings: {mixed}")
    pooled = pool(records)
    queries = len(pooled[BASELINE])
    if args.expect_queries is not None and queries != args.expect_queries:
        raise SystemExit(f"the records hold {queries} queries, not {args.expect_queries}")
    _, dropped = figures(records)
    if dropped:
        warn(f"left out, as some records lack them: {', '.join(dropped)}")
    summary: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "records": [str(path) for path in args.records],
        "models": [record.get("model") for record in records],
        "resolved_models": [record.get("resolved_model") for record in records],
        "settings": settings,
        "dropped_figures": dropped,
        "queries": queries,
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
