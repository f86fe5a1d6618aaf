"""Time ingestion + validation of every LAReQA dataset (issue goal: <= 60 s for all 18 files on 2 cores).

    python benchmarks/ingest_validate.py --data-dir ../shared/data/lareqa

Reports each stage separately (reading, fingerprinting, the Great Expectations import and the contracts) so a
regression shows where it comes from. There is no peer tool doing the same job to compare against.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from data_contracts.validate import check_contracts
from hbir.core.config import load_config
from tasks.ingest import dataset_versions, ingest_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/lareqa"))
    args = parser.parse_args()
    config = load_config(overrides={"data.dir": str(args.data_dir), "data.train": ["mlqa-r"], "data.eval": ["xquad-r"]})
    timings = {}
    start = time.perf_counter()
    datasets = [ingest_dataset(config.data.dir, name, config.data.languages) for name in ("mlqa-r", "xquad-r")]
    timings["read 18 files"] = time.perf_counter() - start
    mark = time.perf_counter()
    versions = [dataset_versions(d) for d in datasets]
    timings["fingerprints"] = time.perf_counter() - mark
    mark = time.perf_counter()
    import data_contracts.validate  # noqa: F401  (timed on its own: Great Expectations is a heavy import)

    timings["import great_expectations"] = time.perf_counter() - mark
    mark = time.perf_counter()
    results = check_contracts(config.data, datasets)
    timings["contracts"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    rows = sum(len(d.queries) + len(d.candidates) + len(d.qrels) for d in datasets)
    print(
        f"{sum(len(v) for v in versions)} language files, {rows} rows, {len(results)} expectations, "
        f"{sum(r.success for r in results)} passed"
    )
    for stage, seconds in timings.items():
        print(f"{stage:>26}: {seconds:6.2f} s")
    print(f"{'peak RSS':>26}: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:6.0f} MiB")


if __name__ == "__main__":
    main()
