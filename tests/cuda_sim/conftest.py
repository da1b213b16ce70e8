"""Tests that only run under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 before Numba loads).

``tests/test_cuda_sim.py`` runs this folder in a subprocess with the simulator switched on; in any
other process (the normal test run) the folder is ignored, so the simulator never leaks into the
rest of the suite.
"""

import os

collect_ignore_glob = []
if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
    collect_ignore_glob = ["test_*.py"]
