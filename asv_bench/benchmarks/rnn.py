"""Time and peak memory of ``gpukb.rnn``: backend x cell x size x mask kind."""

from ._common import BACKENDS, CELLS, MASKS, SIZES, Case


class TimeRnn:
    """One forward pass over the whole sequence. The first call (Numba/CUDA compilation) runs in
    ``setup``; a backend that cannot run here (``cuda`` without a GPU) is skipped by asv."""

    params = (BACKENDS, CELLS, SIZES, MASKS)
    param_names = ["backend", "cell", "size", "mask"]
    timeout = 300  # per parameter combination, set-up included

    def setup(self, backend, cell, size, mask):
        self.case = Case(backend, cell, size, mask)
        self.case.run()  # warm-up: compile outside the timing

    def time_rnn(self, backend, cell, size, mask):
        self.case.run()


class PeakmemRnnCPU:
    """Peak resident memory of the process while running one forward pass on the CPU."""

    params = (CELLS, SIZES)
    param_names = ["cell", "size"]
    timeout = 300

    def setup(self, cell, size):
        self.case = Case("cpu", cell, size, "none")
        self.case.run()

    def peakmem_rnn(self, cell, size):
        self.case.run()
