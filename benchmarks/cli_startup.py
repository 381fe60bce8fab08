"""How fast coral-ml starts: ``--help`` and ``log`` as new processes (issue 6 target: < 0.3 s).

Runs each command ``--repeat`` times in a fresh process against a small
repository (three commits) and reports the median and best wall time, and
which heavy frameworks the process imported (none should be).

    python benchmarks/cli_startup.py [--repeat 15] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from coral_core import Repository

TARGET_S = 0.3
PROBE = (
    "import sys, contextlib\n"
    "from coral_cli.main import cli\n"
    "with contextlib.suppress(SystemExit): cli(sys.argv[1:])\n"
    "heavy = [m for m in ('torch', 'tensorflow', 'transformers', 'mlflow') if m in sys.modules]\n"
    "print('HEAVY', heavy, file=sys.stderr)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "cli_startup.json"
    )
    args = parser.parse_args()
    script = Path(sys.executable).parent / "coral-ml"
    results = {}
    with tempfile.TemporaryDirectory(prefix="coral-cli-") as folder:
        repo = Repository(folder, init=True)
        for i in range(3):
            repo.commit(f"v{i}", weights={"w": np.full((64, 64), i, np.float32)})
        for name, argv in (("--help", ["--help"]), ("log", ["log"])):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                subprocess.run([str(script), *argv], cwd=folder, capture_output=True, check=True)
                times.append(time.perf_counter() - start)
            probe = subprocess.run(
                [sys.executable, "-c", PROBE, *argv], cwd=folder, capture_output=True, text=True
            )
            heavy = probe.stderr.strip().splitlines()[-1].removeprefix("HEAVY ")
            results[name] = {
                "median_s": statistics.median(times),
                "best_s": min(times),
                "heavy_imports": heavy,
            }
    print("| command | median (s) | best (s) | target (s) | heavy imports |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, r in results.items():
        print(
            f"| coral-ml {name} | {r['median_s']:.3f} | {r['best_s']:.3f} | < {TARGET_S} | "
            f"{r['heavy_imports']} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
