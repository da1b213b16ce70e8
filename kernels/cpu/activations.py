"""The activations on the CPU: vectorisable tanh and sigmoid, and the row loops over the table.

The table of activations is ``kernels/cells/activations.py`` (names, codes, ``activate``). Its
``tanh`` and ``sigmoid`` are implemented here for the CPU: Numba's scalar ``np.tanh``/``np.exp``
call libm one element at a time, which stops LLVM from vectorising the gate loops. These use only
arithmetic and two tiny LLVM intrinsics (a branch-free select, and bit arithmetic that turns a
rounded exponent into a power of two), so a loop over a contiguous row compiles to AVX2 code.
Each is written once for float32 and float64: the constants of a dtype (``_EXP``) come in as a
compile-time tuple.

Accuracy (tests/test_kernels_cpu.py checks the max error against NumPy over a wide range):
- exp: Cody-Waite reduction x = n ln2 + r, Taylor polynomial on |r| <= ln2/2 (degree 7 float32,
  13 float64), times 2**n; inputs clamped to the normal-number range.
- sigmoid = 1 / (1 + exp(-x)); tanh = -e / (2 + e) with e = expm1(-2|x|) from the same
  reduction (2**n expm1(r) + 2**n - 1), so small arguments keep their relative accuracy.
- at most 3 ulp (float32 and float64); NaN in -> NaN out for every activation; +-inf saturate.
- Only ``fastmath={"contract"}`` (FMA contraction) is used anywhere: no NaN/inf assumptions.

``act_into``/``act_inplace`` apply an activation code along a row: the branch on the code sits
outside each loop, so the tanh and sigmoid loops are branch-free; other activations (cheap,
piecewise linear) share one loop over the table's ``activate``.
"""

import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ..cells import activations as table
from ..cells import register
from ..cells.activations import SIGMOID, TANH, activate
from ._common import KERNEL_OPTIONS
from ._numba_cache import cached_njit, ensure_fresh_cache

register()  # the cell definitions become callable from the kernels


# --------------------------------------------------------------------------------------------
# LLVM intrinsics (inlined, vectorisable)


def _float_info(ty):
    if ty == types.float32:
        return ir.FloatType(), ir.IntType(32), 127, 23, "f32", "i32"
    if ty == types.float64:
        return ir.DoubleType(), ir.IntType(64), 1023, 52, "f64", "i64"
    return None


@intrinsic
def _pow2_magic(typingctx, m):
    """2**n from m = v + MAGIC, where MAGIC = 1.5 * 2**mantissa_bits, so m's low mantissa bits
    hold n = round(v) (the caller keeps n in the normal exponent range). Pure bit arithmetic:
    NaN gives some finite power of two, never poison."""
    info = _float_info(m)
    if info is None:
        return None

    def codegen(context, builder, sig, args):
        fty, ity, bias, shift = info[:4]
        magic_bits = (0x4B400000 if shift == 23 else 0x4338000000000000)
        i = builder.bitcast(args[0], ity)
        i = builder.add(i, ir.Constant(ity, (bias - magic_bits) % (1 << ity.width)))
        i = builder.shl(i, ir.Constant(ity, shift))
        return builder.bitcast(i, fty)

    return m(m), codegen


@intrinsic
def _select(typingctx, cond, a, b):
    """cond ? a : b as one LLVM select: no branch, so Numba's inliner creates no phi nodes and
    LLVM vectorises it (a blend)."""
    if not isinstance(cond, types.Boolean) or a != b or _float_info(a) is None:
        return None

    def codegen(context, builder, sig, args):
        c, x, y = args
        if c.type != ir.IntType(1):
            c = builder.trunc(c, ir.IntType(1))
        return builder.select(c, x, y)

    return a(cond, a, b), codegen


# --------------------------------------------------------------------------------------------
# exp, expm1, tanh, sigmoid: one definition, the constants of each dtype in _EXP


class _ExpConstants(NamedTuple):
    high: float       # inputs clamped to [low, high], so that 2**n stays a normal number
    low: float
    log2e: float
    magic: float      # 1.5 * 2**mantissa_bits: adding it rounds to an integer
    ln2_high: float   # ln2 = ln2_high + ln2_low, ln2_high with few mantissa bits (exact n * ln2_high)
    ln2_low: float
    taylor: tuple     # 1 / k! for k = 0 .. degree
    zero: float
    one: float
    two: float
    minus_two: float


def _exp_constants(dtype, high, low, magic, ln2_high, ln2_low, degree):
    f = np.dtype(dtype).type
    return _ExpConstants(f(high), f(low), f(1.4426950408889634), f(magic), f(ln2_high), f(ln2_low),
                         tuple(f(1.0 / math.factorial(k)) for k in range(degree + 1)),
                         f(0.0), f(1.0), f(2.0), f(-2.0))


_EXP = {
    types.float32: _exp_constants(np.float32, 88.0, -87.0, 12582912.0, 0.693359375,
                                  -2.12194440e-4, 7),
    types.float64: _exp_constants(np.float64, 709.0, -708.0, 6755399441055744.0,
                                  6.93145751953125e-1, 1.42860682030941723212e-6, 13),
}


def _horner(r, coefficients):
    """coefficients[0] + r * (coefficients[1] + r * (...)): one FMA per term under contract."""
    raise NotImplementedError("only callable from jitted code")


# One compiled function per length, inlined by LLVM (forceinline): inlining the recursion in
# Numba's IR instead (inline="always") retypes it at every level, exponentially in the degree.
@overload(_horner, target="cpu", jit_options={"forceinline": True})
def _horner_cpu(r, coefficients):
    if len(coefficients) == 1:
        return lambda r, coefficients: coefficients[0]
    return lambda r, coefficients: _horner(r, coefficients[1:]) * r + coefficients[0]


@njit(inline="always")
def _reduce(x0, k):
    """(r, m) with x = n ln2 + r, |r| <= ln2/2, and m = x / ln2 + magic (see _pow2_magic)."""
    x1 = _select(x0 > k.high, k.high, x0)  # NaN passes both clamps
    x = _select(x1 < k.low, k.low, x1)
    m = x * k.log2e + k.magic
    n = m - k.magic                        # round(x / ln2), exact
    r = x - n * k.ln2_high
    r = r - n * k.ln2_low
    return r, m


@njit(inline="always")
def _exp(x, k):
    r, m = _reduce(x, k)
    return _horner(r, k.taylor) * _pow2_magic(m)


@njit(inline="always")
def _expm1(x, k):
    """2**n * expm1(r) + (2**n - 1): n = 0 near zero, so small x keep their relative accuracy."""
    r, m = _reduce(x, k)
    p = _horner(r, k.taylor[1:]) * r
    s = _pow2_magic(m)
    return s * p + (s - k.one)


@njit(inline="always")
def _tanh(x, k):
    em = _expm1(k.minus_two * abs(x), k)   # in (-1, 0]
    t = -em / (k.two + em)
    return _select(x < k.zero, -t, t)


@njit(inline="always")
def _sigmoid(x, k):
    return k.one / (k.one + _exp(-x, k))


def _cpu_implementation(function):
    """Register ``function(x, constants)`` as the CPU's compiled version of the table's function
    of the same name (forceinline, like the table's own functions)."""

    def typer(x):
        k = _EXP.get(x)
        if k is None:
            return None
        return lambda x: function(x, k)

    overload(getattr(table, function.__name__.lstrip("_")), target="cpu",
             jit_options={"forceinline": True})(typer)


_cpu_implementation(_tanh)
_cpu_implementation(_sigmoid)


# --------------------------------------------------------------------------------------------
# Row loops


@cached_njit(**KERNEL_OPTIONS, inline="always")
def _apply(code, dst, src):
    """dst[j] = activate(code, src[j]) along a row; tanh and sigmoid in loops of their own."""
    n = dst.shape[0]
    if code == TANH:
        for j in range(n):
            dst[j] = activate(TANH, src[j])
    elif code == SIGMOID:
        for j in range(n):
            dst[j] = activate(SIGMOID, src[j])
    else:
        for j in range(n):
            dst[j] = activate(code, src[j])


@cached_njit(**KERNEL_OPTIONS)
def act_inplace(code, v):
    """v[j] = act(v[j]) for a contiguous row v."""
    _apply(code, v, v)


@cached_njit(**KERNEL_OPTIONS)
def act_into(code, dst, src):
    """dst[j] = act(src[j]) for contiguous rows."""
    _apply(code, dst, src)


@cached_njit(**KERNEL_OPTIONS)
def _apply_flat(code, x):
    out = np.empty_like(x)
    act_into(code, out, x)
    return out


def apply_activation(name, x):
    """Apply the kernels' activation ``name`` to a NumPy float32/float64 array (for tests)."""
    ensure_fresh_cache()
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"apply_activation: float32 or float64 expected, got {x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    return _apply_flat(table.code(name), flat).reshape(x.shape)
