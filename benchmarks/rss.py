"""Peak resident memory of this process over a window, for the benchmarks."""

from __future__ import annotations

import os
import threading
import time


class PeakRSS:
    """Samples this process's resident memory every 5 ms; ``peak`` since ``reset``."""

    def __init__(self) -> None:
        self.peak = 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * self._page

    def reset(self) -> int:
        """Start a new window; return the RSS at its start."""
        self.peak = self.now()
        return self.peak

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            time.sleep(0.005)
