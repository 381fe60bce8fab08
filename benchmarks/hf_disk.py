"""Disk use of a Hugging Face Trainer run with the Coral callback: the Trainer's
checkpoint folders kept beside the commits (the default) against Coral holding
them (``keep_trainer_checkpoints=False``), with and without ``save_total_limit``.

The run is the coral_hf tests' one-layer BERT (3,650 parameters), six epochs of
four steps, a checkpoint per epoch, ``load_best_model_at_end``. It reports the
bytes in the files of ``output_dir`` and ``.coral`` and what the file system
allocated for them (``st_blocks``). Target: with Coral holding the checkpoints,
less than the default in total.

    python benchmarks/hf_disk.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' tiny model

from coral_core import Repository
from tests.coral_hf.tiny import BEST_RUN, disk_usage, train


def measure(folder: Path, keep: bool, limit: int | None) -> dict[str, Any]:
    """Train the tiny run into ``folder``; the disk use of ``output_dir`` and ``.coral``."""
    repo = Repository(folder / "repo", init=True)
    train(repo, folder / "out", keep_trainer_checkpoints=keep, save_total_limit=limit, **BEST_RUN)
    out, coral = disk_usage(folder / "out"), disk_usage(repo.coral_dir)
    return {
        "save_total_limit": limit,
        "keep_trainer_checkpoints": keep,
        "output_dir": out,
        "coral": coral,
        "total": (out[0] + coral[0], out[1] + coral[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).parent / "results" / "hf_disk.json"
    parser.add_argument("--json", type=Path, default=default)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for limit in (None, 2):
            for keep in (True, False):
                rows.append(measure(Path(scratch) / f"{limit}-{keep}", keep, limit))

    def cell(pair: tuple[int, int]) -> str:
        return f"{pair[0]:,} B ({pair[1]:,} B allocated)"

    print("| save_total_limit | keep_trainer_checkpoints | output_dir | .coral | total |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [cell(row[k]) for k in ("output_dir", "coral", "total")]
        print(
            f"| {row['save_total_limit']} | {row['keep_trainer_checkpoints']} | "
            + " | ".join(cells)
            + " |"
        )
    for limit in (None, 2):
        kept, held = (r["total"][0] for r in rows if r["save_total_limit"] == limit)
        print(
            f"save_total_limit={limit}: Coral holding them {held / kept:.2f}x the default's "
            "bytes (target: < 1)"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
