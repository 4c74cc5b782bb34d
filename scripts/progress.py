"""Progress of a long build step: reads the step's output on stdin, keeps all of it in LOG, and prints
one short line per advance: cmake's `[ 42%]` percentages, or pip's count of packages collected.

    cmake --build ... 2>&1 | python3 scripts/progress.py "engine: compiling" build.log
"""

from __future__ import annotations

import re
import sys
import time
from typing import Iterator

_PERCENT = re.compile(r"^\[\s*(\d{1,3})%\]")
_PIP = re.compile(r"^\s*(Collecting|Requirement already satisfied:?) (\S+)")
STEP_PERCENT = 5      # print at every 5% of a cmake build
QUIET_S = 20.0        # and a "still working" line after this long without one


def lines_for(stream, label: str, log, now=time.monotonic) -> Iterator[str]:
    shown, packages, last = -STEP_PERCENT, 0, now()
    for line in stream:
        log.write(line)
        m = _PERCENT.match(line)
        if m and (int(m.group(1)) >= shown + STEP_PERCENT or int(m.group(1)) == 100 > shown):
            shown = int(m.group(1))
            last = now()
            yield f"{label} {shown:3d}%"
            continue
        m = _PIP.match(line)
        if m:
            packages += 1
            if packages % 10 == 1:
                last = now()
                yield f"{label}: {packages} packages ({m.group(2)})"
            continue
        if now() - last > QUIET_S:
            last = now()
            yield f"{label}: still working ({line.strip()[:60]})"


def main(argv: list[str]) -> int:
    label, log_path = argv[1], argv[2]
    with open(log_path, "w") as log:
        for out in lines_for(sys.stdin, label, log):
            print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
