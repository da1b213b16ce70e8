"""``gpukb bench --model PATH``: what is timed on a saved Keras model, and how results are checked.

- ``plan_inputs``: the model's inputs as the benchmark makes them (shape without the batch axis,
  dtype, the id range of the Embedding layers they feed), time steps resolved from the file or
  ``--steps``; bad combinations are ``ValueError`` before anything runs;
- ``make_inputs``: seeded random inputs: ids in ``[0, input_dim)`` for inputs read by an
  ``Embedding`` (from 1, and right-padded with zeros, where the Embedding has ``mask_zero``),
  standard normal floats otherwise;
- ``ModelProblem``: one batch size's inputs and the reference outputs (gpukb ``cpu``'s
  ``predict``, computed once by the parent process), stored in a ``.npz`` the workers read, so
  every implementation gets the very same inputs;
- ``run_one``: time one call (``predict`` or ``model(x)``) of one implementation and compare its
  outputs with the reference: a peer whose outputs differ by more than ``TOLERANCE`` is
  ``"wrong"``, and a wrong peer is never the fastest;
- ``ModelResult``: one row of the table.

The implementations themselves (gpukb, Keras 3 per backend, tf.keras) are in ``model_peers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Time steps of inputs whose length the file leaves open, when ``--steps`` is not given.
DEFAULT_STEPS = 256
#: Largest ``max |out - ref| / max |ref|`` (per output) that still counts as the same outputs:
#: float32 models over a few hundred steps agree with gpukb to ~1e-6; 1e-4 leaves room for
#: other summation orders, and is far below what a wrong mask or activation does.
TOLERANCE = 1e-4
#: The calls timed, and how the table names them.
CALLS = ("predict", "call")
CALL_LABELS = {"predict": "predict", "call": "model(x)"}
#: Range of an integer input that feeds no Embedding.
INTEGER_RANGE = 100


@dataclass(frozen=True)
class InputPlan:
    """One model input as the benchmark makes it."""

    name: str
    shape: tuple          # without the batch axis, every size known
    dtype: str
    batch: int | None     # the batch size the file fixes, if any
    sequence: bool        # axis 1 is time (padding goes there)
    vocabulary: int | None = None   # ids in [0, vocabulary): the input feeds an Embedding
    mask_zero: bool = False         # an Embedding it feeds has mask_zero: pad with 0

    def label(self) -> str:
        dims = ", ".join(str(d) for d in ("B",) + self.shape)
        return f"{self.name} ({dims}) {self.dtype}"


def plan_inputs(model, steps: int | None = None) -> list[InputPlan]:
    """The inputs of a loaded ``gpukb.keras.Model`` with every size but the batch resolved: time
    steps from the file, else ``steps`` (default ``DEFAULT_STEPS``). A sequence input is one of
    rank 3 or more, or an integer (or Embedding-fed) input of rank 2; its axis 1 is time.
    ValueError when ``steps`` contradicts a fixed length or a size other than time is open."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps must be a positive integer, got {steps!r}.")
    from ..keras.layers.base import shape_text

    feeds = model._embedding_feeds          # input index -> the Embedding layers it feeds
    plans = []
    for i, (name, sym) in enumerate(zip(model.input_names, model._input_syms)):
        dtype = np.dtype(sym.dtype)
        embeddings = feeds.get(i, [])
        sequence = len(sym.shape) >= 3 or (len(sym.shape) == 2 and (bool(embeddings)
                                                                    or dtype.kind in "iu"))
        dims = list(sym.shape[1:])
        if sequence and dims[0] is None:
            dims[0] = steps or DEFAULT_STEPS
        elif sequence and steps is not None and dims[0] != steps:
            raise ValueError(f"--steps {steps}: input {name!r} of the model has a fixed number of "
                             f"time steps, {dims[0]} (shape {shape_text(sym.shape)}); leave "
                             "--steps out to use it.")
        open_axes = [axis for axis, size in enumerate(dims, 1) if size is None]
        if open_axes:
            raise ValueError(f"input {name!r} of the model has shape {shape_text(sym.shape)}: "
                             f"its size on axis {open_axes[0]} is not fixed, so gpukb bench "
                             "cannot make inputs for it.")
        plans.append(InputPlan(
            name, tuple(int(d) for d in dims), dtype.name, sym.shape[0], sequence,
            vocabulary=min(e.input_dim for e in embeddings) if embeddings else None,
            mask_zero=any(e.mask_zero for e in embeddings)))
    return plans


def check_batch_sizes(plans: list[InputPlan], batch_sizes) -> None:
    """ValueError unless every batch size fits the batch size the file fixes (if any)."""
    for plan in plans:
        wrong = [b for b in batch_sizes if plan.batch is not None and b != plan.batch]
        if wrong:
            raise ValueError(f"--batch-sizes: input {plan.name!r} of the model has a fixed batch "
                             f"size, {plan.batch}; got {', '.join(map(str, wrong))}.")


def make_inputs(plans: list[InputPlan], batch: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded inputs for ``batch`` samples, in the model's input order (see the module doc).
    Padded rows keep at least half of their steps (at least one)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for plan in plans:
        shape = (batch,) + plan.shape
        integer = plan.vocabulary is not None or np.dtype(plan.dtype).kind in "iu"
        if not integer:
            arrays.append(rng.standard_normal(shape).astype(plan.dtype))
            continue
        high = plan.vocabulary if plan.vocabulary is not None else INTEGER_RANGE
        low = 1 if plan.mask_zero and high > 1 else 0
        ids = rng.integers(low, high, size=shape)
        if plan.mask_zero and plan.sequence:
            steps = plan.shape[0]
            lengths = rng.integers(max(1, steps // 2), steps + 1, size=batch)
            keep = np.arange(steps)[None, :] < lengths[:, None]
            ids = ids * keep.reshape(keep.shape + (1,) * (ids.ndim - 2))
        arrays.append(ids.astype(plan.dtype))
    return arrays


def max_relative_difference(outputs, reference) -> float:
    """The largest, over the outputs, of ``max |out - ref| / max |ref|`` (``inf`` where a
    difference is not finite). ValueError when the number or shapes of the outputs differ."""
    outputs, reference = list(outputs), list(reference)
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} output(s); gpukb's model has {len(reference)}.")
    worst = 0.0
    for i, (out, ref) in enumerate(zip(outputs, reference)):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.shape != ref.shape:
            raise ValueError(f"output {i} has shape {out.shape}; gpukb's has {ref.shape}.")
        if not out.size:
            continue
        difference = np.abs(out - ref)
        if not np.all(np.isfinite(difference)):
            return float("inf")
        scale = float(np.max(np.abs(ref))) or 1.0
        worst = max(worst, float(np.max(difference)) / scale)
    return worst


def as_list(outputs: Any) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


@dataclass
class ModelProblem:
    """One batch size: the inputs (model order) and gpukb ``cpu``'s ``predict`` outputs."""

    batch: int
    inputs: list
    reference: list

    def save(self, path) -> None:
        arrays = {f"x{i}": x for i, x in enumerate(self.inputs)}
        arrays.update({f"y{i}": y for i, y in enumerate(self.reference)})
        np.savez(path, **arrays)

    @classmethod
    def load(cls, batch: int, path) -> "ModelProblem":
        with np.load(path) as data:
            def arrays(prefix):
                return [data[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) for k in data))]

            return cls(batch, arrays("x"), arrays("y"))


def make_problem(model, plans: list[InputPlan], batch: int, seed: int = 0) -> ModelProblem:
    """Inputs for ``batch`` samples and the reference outputs: ``model`` (a gpukb model loaded
    with the ``cpu`` backend) ``.predict`` on them."""
    inputs = make_inputs(plans, batch, seed)
    outputs = model.predict(inputs if len(inputs) > 1 else inputs[0])
    return ModelProblem(batch, inputs, [np.asarray(y) for y in as_list(outputs)])


@dataclass
class ModelResult:
    """One implementation, one batch size, one call."""

    batch: int
    call: str                     # "predict" or "call" (model(x))
    implementation: str           # the display label
    key: str                      # the stable name, e.g. "keras3[jax]", "gpukb[cpu]"
    kind: str                     # "gpukb" or "peer"
    status: str = "ok"            # "ok", "error", or "wrong" (outputs differ from gpukb's)
    error: str = ""
    median_s: float | None = None
    min_s: float | None = None
    repeats: int = 0
    first_call_s: float | None = None
    max_rel_diff: float | None = None
    ratio_to_fastest_peer: float | None = None

    @property
    def group(self) -> tuple:
        return (self.batch, self.call)

    def as_dict(self) -> dict:
        """The JSON form (``--json``)."""
        return {
            "batch": self.batch, "call": self.call, "call_label": CALL_LABELS[self.call],
            "implementation": self.implementation, "key": self.key, "kind": self.kind,
            "status": self.status, "error": self.error or None,
            "median_ms": None if self.median_s is None else self.median_s * 1e3,
            "min_ms": None if self.min_s is None else self.min_s * 1e3,
            "first_call_ms": None if self.first_call_s is None else self.first_call_s * 1e3,
            "repeats": self.repeats, "max_rel_diff": self.max_rel_diff,
            "ratio_to_fastest_peer": self.ratio_to_fastest_peer,
        }

    def to_wire(self) -> dict:
        return {name: getattr(self, name) for name in ModelResult.__dataclass_fields__}

    @classmethod
    def from_wire(cls, data: dict) -> "ModelResult":
        return cls(**data)


def run_one(implementation, problem: ModelProblem, call: str, *, repeats: int,
            budget_s: float) -> ModelResult:
    """Build, warm up, time and check one implementation on one batch size and call."""
    from .runner import timed

    result = ModelResult(problem.batch, call, implementation.label(call), implementation.key,
                         implementation.kind)

    def check(outputs):
        result.max_rel_diff = max_relative_difference(outputs, problem.reference)

    timed(result, lambda: implementation.build(problem.inputs, call), check,
          repeats=repeats, budget_s=budget_s)
    difference = result.max_rel_diff
    if result.status == "ok" and difference is not None and not difference <= TOLERANCE:
        result.status = "wrong"
        result.error = (f"its outputs differ from gpukb's: max rel. diff {difference:.1e} "
                        f"> {TOLERANCE:g}")
    return result
