"""What a kernel needs to know about a cell's arrays: ``Layout``, and the cell kinds.

A cell kind is a small int (``LSTM``, ``GRU``, ``GRU_BEFORE``, ``SIMPLE_RNN``), the one spelling
every kernel uses; its ``Layout.name`` is the same kind in words. GRU has two kinds because its
two ``reset_after`` modes run differently: with ``reset_after=True`` (``GRU``) the reset gate
multiplies ``h @ recurrent_kernel + recurrent bias``; with ``reset_after=False`` (``GRU_BEFORE``)
it multiplies ``h`` before the candidate's product, which then waits for the reset gate.
"""

from __future__ import annotations

from typing import NamedTuple

LSTM, GRU, GRU_BEFORE, SIMPLE_RNN = range(4)


class Layout(NamedTuple):
    """The arrays of one cell kind, in the Keras layout (units ``H``, gates ``G = gates * H``).

    kernel ``(D, G)`` and recurrent_kernel ``(H, G)`` hold one group of ``H`` columns per gate, in
    the order of ``gate_names``; ``bias`` is ``(G,)``, added to ``x @ kernel``, or ``(2, G)`` when
    ``recurrent_bias``: row 0 added to ``x @ kernel``, row 1 to ``h @ recurrent_kernel``.
    """

    kind: int
    name: str
    gate_names: tuple
    state_names: tuple
    recurrent_bias: bool = False
    reset_before: bool = False

    @property
    def gates(self) -> int:
        return len(self.gate_names)

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    def bias_shape(self, units: int) -> tuple:
        columns = self.gates * units
        return (2, columns) if self.recurrent_bias else (columns,)
