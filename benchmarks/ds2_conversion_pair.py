"""One layout, one code tree (whatever ``scibench_data`` PYTHONPATH gives): convert the products under
SRC in this process (``scheduler="sync"``), then measure the ceiling (the least work of a conversion,
one core: ``ds2_scale.ceiling``); print one JSON line. ``pct_ceiling_cpu`` = the ceiling's CPU-s per
product / the conversion's (all its threads): the per-core efficiency, the figure that load on a
shared machine disturbs least. Start it twice at once, once per tree, to compare two
versions under the same load (issue 19):

    git archive c596523 | tar -x -C /tmp/base      # the code before issue 19
    PYTHONPATH=/tmp/base python benchmarks/ds2_conversion_pair.py hdf SRC before &
    PYTHONPATH=. python benchmarks/ds2_conversion_pair.py hdf SRC after; wait
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import ds2_scale

import scibench_data
from scibench_data.convert.cloudmask import (
    CloudMaskConversion,
    convert_cloudmask,
    keep_freed_memory,
)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


def main() -> None:
    keep_freed_memory()  # as `scibench-data convert` does in its own process (a library call does not)
    layout, src, tag = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    dest = Path(tempfile.mkdtemp(prefix=f"pair-{tag}-")) / "s.zarr"
    load0 = os.getloadavg()
    c0, t0 = _cpu(), time.perf_counter()
    rep = convert_cloudmask(str(src), str(dest), CloudMaskConversion(layout=layout, scheduler="sync", progress=False))
    wall, used = time.perf_counter() - t0, _cpu() - c0
    if not rep.ok:
        raise RuntimeError("\n".join(rep.lines()))
    shutil.rmtree(dest.parent, ignore_errors=True)
    c1, t1 = _cpu(), time.perf_counter()
    ceil = ds2_scale.ceiling(src, layout)
    cwall, cused = time.perf_counter() - t1, _cpu() - c1
    mbps, cores = rep.bytes_read / wall / 1e6, used / wall
    print(json.dumps({
        "tree": tag, "code": os.path.dirname(scibench_data.__file__), "layout": layout, "products": rep.total,
        "wall_s": round(wall, 2), "cpu_s_per_product": round(used / rep.total, 3), "cores_obtained": round(cores, 2),
        "MBps": round(mbps, 1), "ceiling_MBps": round(ceil["MBps"], 1), "ceiling_cores": round(cused / cwall, 2),
        "ceiling_cpu_s_per_product": round(ceil["cpu_s"], 3), "sha256_s_per_product": round(ceil["sha256_s"], 3),
        "pct_ceiling_cpu": round(100 * ceil["cpu_s"] / (used / rep.total)),
        "pct_ceiling_per_process": round(100 * mbps / ceil["MBps"]),
        "pct_ceiling_per_core_obtained": round(100 * mbps / cores / ceil["MBps"]),
        "load_start": [round(x, 1) for x in load0], "load_end": [round(x, 1) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
