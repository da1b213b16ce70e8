"""The flags of an rnn call, as every kernel takes them: one typed ``LoopOptions``."""

from __future__ import annotations

from typing import NamedTuple


class LoopOptions(NamedTuple):
    """``gpukb.rnn``'s flags of the same names (a NamedTuple: compiled code reads it as is)."""

    go_backwards: bool = False
    zero_output_for_mask: bool = False
    return_all_outputs: bool = True
    time_major: bool = False

    def normalized(self) -> "LoopOptions":
        """The same options as Python bools (so compiled code sees one type for them)."""
        return LoopOptions(*(bool(flag) for flag in self))
