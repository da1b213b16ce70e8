"""Vectorisable activations for the fused CPU RNN kernels.

Numba's scalar ``np.tanh``/``np.exp`` call libm one element at a time, which stops LLVM from
vectorising the gate loops. The functions here use only arithmetic and two tiny LLVM intrinsics
(a branch-free select, and bit arithmetic that turns a rounded exponent into a power of two), so
a loop over a contiguous row compiles to AVX2 code, and they are inlined at Numba IR level
without creating phi nodes.

Accuracy (tests/test_kernels_cpu.py checks the max error against NumPy over a wide range):
- exp: Cody-Waite reduction x = n ln2 + r, Taylor polynomial on |r| <= ln2/2 (degree 7 float32,
  13 float64), times 2**n; inputs clamped to the normal-number range.
- sigmoid = 1 / (1 + exp(-x)); tanh = -e / (2 + e) with e = expm1(-2|x|) from the same
  reduction (2**n expm1(r) + 2**n - 1), so small arguments keep their relative accuracy.
- at most 3 ulp (float32 and float64); NaN in -> NaN out for every activation; +-inf saturate.
- Only ``fastmath={"contract"}`` (FMA contraction) is used anywhere: no NaN/inf assumptions.

Activation names map to small int codes (``activation_code``) that the kernels switch on outside
their inner loops.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ._numba_cache import cached_njit

SUPPORTED_ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear")
TANH, SIGMOID, HARD_SIGMOID, RELU, LINEAR = range(5)
_CODES = {name: i for i, name in enumerate(SUPPORTED_ACTIVATIONS)}


def activation_code(name):
    """The kernels' int code for an activation name (ValueError for an unknown name)."""
    try:
        return _CODES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation {name!r} is not supported by the CPU kernels; "
            f"expected one of {SUPPORTED_ACTIVATIONS}") from None


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
# float32 scalar functions (every constant is a float32 global, so nothing promotes to float64)

_f = np.float32
_E32_HI, _E32_LO = _f(88.0), _f(-87.0)     # keeps 2**n a normal number (n in [-126, 127])
_LOG2E32 = _f(1.4426950408889634)
_MAGIC32 = _f(12582912.0)                  # 1.5 * 2**23
_LN2HI32, _LN2LO32 = _f(0.693359375), _f(-2.12194440e-4)
_F32_0, _F32_1, _F32_2, _F32_M2 = _f(0.0), _f(1.0), _f(2.0), _f(-2.0)
_F32_HALF, _F32_MHALF, _F32_P2 = _f(0.5), _f(-0.5), _f(0.2)
_E32 = tuple(_f(1.0 / np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(10))


@njit(inline="always")
def _exp32(x0):
    x1 = _select(x0 > _E32_HI, _E32_HI, x0)  # NaN passes both clamps
    x = _select(x1 < _E32_LO, _E32_LO, x1)
    m = x * _LOG2E32 + _MAGIC32
    n = m - _MAGIC32                        # round(x / ln2), exact
    r = x - n * _LN2HI32
    r = r - n * _LN2LO32
    p = _E32[7]
    p = p * r + _E32[6]
    p = p * r + _E32[5]
    p = p * r + _E32[4]
    p = p * r + _E32[3]
    p = p * r + _E32[2]
    p = p * r + _E32[1]
    p = p * r + _E32[0]
    return p * _pow2_magic(m)


@njit(inline="always")
def _expm1_32(x0):
    """expm1(x): the exp reduction x = n ln2 + r, then 2**n * expm1(r) + (2**n - 1) with a
    degree-7 Taylor expm1(r) on |r| <= ln2/2; n = 0 near zero, so small x keep their
    relative accuracy."""
    x1 = _select(x0 > _E32_HI, _E32_HI, x0)  # NaN passes both clamps
    x = _select(x1 < _E32_LO, _E32_LO, x1)
    m = x * _LOG2E32 + _MAGIC32
    n = m - _MAGIC32
    r = x - n * _LN2HI32
    r = r - n * _LN2LO32
    p = _E32[7]
    p = p * r + _E32[6]
    p = p * r + _E32[5]
    p = p * r + _E32[4]
    p = p * r + _E32[3]
    p = p * r + _E32[2]
    p = p * r + _E32[1]
    p = p * r
    s = _pow2_magic(m)
    return s * p + (s - _F32_1)


@njit(inline="always")
def _tanh32(x):
    em = _expm1_32(_F32_M2 * abs(x))     # in (-1, 0]
    t = -em / (_F32_2 + em)
    return _select(x < _F32_0, -t, t)


@njit(inline="always")
def _sigmoid32(x):
    return _F32_1 / (_F32_1 + _exp32(-x))


@njit(inline="always")
def _hard_sigmoid32(x):
    y = _F32_P2 * x + _F32_HALF
    y0 = _select(y < _F32_0, _F32_0, y)
    return _select(y0 > _F32_1, _F32_1, y0)


@njit(inline="always")
def _relu32(x):
    return _select(x < _F32_0, _F32_0, x)  # NaN stays NaN


# --------------------------------------------------------------------------------------------
# float64 scalar functions

_d = np.float64
_E64_HI, _E64_LO = _d(709.0), _d(-708.0)  # n in [-1022, 1023]
_LOG2E64 = _d(1.4426950408889634)
_MAGIC64 = _d(6755399441055744.0)          # 1.5 * 2**52
_LN2HI64, _LN2LO64 = _d(6.93145751953125e-1), _d(1.42860682030941723212e-6)
_F64_0, _F64_1, _F64_2, _F64_M2 = _d(0.0), _d(1.0), _d(2.0), _d(-2.0)
_F64_HALF, _F64_MHALF, _F64_P2 = _d(0.5), _d(-0.5), _d(0.2)
_E64 = tuple(_d(1.0 / np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(17))


@njit(inline="always")
def _exp64(x0):
    x1 = _select(x0 > _E64_HI, _E64_HI, x0)  # NaN passes both clamps
    x = _select(x1 < _E64_LO, _E64_LO, x1)
    m = x * _LOG2E64 + _MAGIC64
    n = m - _MAGIC64
    r = x - n * _LN2HI64
    r = r - n * _LN2LO64
    p = _E64[13]
    p = p * r + _E64[12]
    p = p * r + _E64[11]
    p = p * r + _E64[10]
    p = p * r + _E64[9]
    p = p * r + _E64[8]
    p = p * r + _E64[7]
    p = p * r + _E64[6]
    p = p * r + _E64[5]
    p = p * r + _E64[4]
    p = p * r + _E64[3]
    p = p * r + _E64[2]
    p = p * r + _E64[1]
    p = p * r + _E64[0]
    return p * _pow2_magic(m)


@njit(inline="always")
def _expm1_64(x0):
    """expm1(x) as _expm1_32, with a degree-13 Taylor expm1(r)."""
    x1 = _select(x0 > _E64_HI, _E64_HI, x0)
    x = _select(x1 < _E64_LO, _E64_LO, x1)
    m = x * _LOG2E64 + _MAGIC64
    n = m - _MAGIC64
    r = x - n * _LN2HI64
    r = r - n * _LN2LO64
    p = _E64[13]
    p = p * r + _E64[12]
    p = p * r + _E64[11]
    p = p * r + _E64[10]
    p = p * r + _E64[9]
    p = p * r + _E64[8]
    p = p * r + _E64[7]
    p = p * r + _E64[6]
    p = p * r + _E64[5]
    p = p * r + _E64[4]
    p = p * r + _E64[3]
    p = p * r + _E64[2]
    p = p * r + _E64[1]
    p = p * r
    s = _pow2_magic(m)
    return s * p + (s - _F64_1)


@njit(inline="always")
def _tanh64(x):
    em = _expm1_64(_F64_M2 * abs(x))
    t = -em / (_F64_2 + em)
    return _select(x < _F64_0, -t, t)


@njit(inline="always")
def _sigmoid64(x):
    return _F64_1 / (_F64_1 + _exp64(-x))


@njit(inline="always")
def _hard_sigmoid64(x):
    y = _F64_P2 * x + _F64_HALF
    y0 = _select(y < _F64_0, _F64_0, y)
    return _select(y0 > _F64_1, _F64_1, y0)


@njit(inline="always")
def _relu64(x):
    return _select(x < _F64_0, _F64_0, x)


# --------------------------------------------------------------------------------------------
# dtype-generic scalar entry points (resolved at compile time)


def tanh_(x):
    raise NotImplementedError("only callable from jitted code")


def sigmoid_(x):
    raise NotImplementedError("only callable from jitted code")


def hard_sigmoid_(x):
    raise NotImplementedError("only callable from jitted code")


def relu_(x):
    raise NotImplementedError("only callable from jitted code")


def _make_overload(stub, f32, f64):
    @overload(stub, inline="always")
    def _ol(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return lambda x: f64(x)
        return None

    return _ol


_make_overload(tanh_, _tanh32, _tanh64)
_make_overload(sigmoid_, _sigmoid32, _sigmoid64)
_make_overload(hard_sigmoid_, _hard_sigmoid32, _hard_sigmoid64)
_make_overload(relu_, _relu32, _relu64)


# --------------------------------------------------------------------------------------------
# Row loops. The branch on the code sits outside each loop, so every loop body is branch-free.


@cached_njit(fastmath={"contract"}, error_model="numpy")
def act_inplace(code, v):
    """v[j] = act(v[j]) for a contiguous row v."""
    n = v.shape[0]
    if code == TANH:
        for j in range(n):
            v[j] = tanh_(v[j])
    elif code == SIGMOID:
        for j in range(n):
            v[j] = sigmoid_(v[j])
    elif code == HARD_SIGMOID:
        for j in range(n):
            v[j] = hard_sigmoid_(v[j])
    elif code == RELU:
        for j in range(n):
            v[j] = relu_(v[j])


@cached_njit(fastmath={"contract"}, error_model="numpy")
def act_into(code, dst, src):
    """dst[j] = act(src[j]); dst and src must not overlap."""
    n = dst.shape[0]
    if code == TANH:
        for j in range(n):
            dst[j] = tanh_(src[j])
    elif code == SIGMOID:
        for j in range(n):
            dst[j] = sigmoid_(src[j])
    elif code == HARD_SIGMOID:
        for j in range(n):
            dst[j] = hard_sigmoid_(src[j])
    elif code == RELU:
        for j in range(n):
            dst[j] = relu_(src[j])
    else:
        for j in range(n):
            dst[j] = src[j]


@cached_njit(error_model="numpy")
def _apply_flat(code, x):
    out = np.empty_like(x)
    act_into(code, out, x)
    return out


def apply_activation(name, x):
    """Apply the kernels' activation ``name`` to a NumPy float32/float64 array (for tests)."""
    from ._numba_cache import ensure_fresh_cache

    ensure_fresh_cache()
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"apply_activation: float32 or float64 expected, got {x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    return _apply_flat(activation_code(name), flat).reshape(x.shape)
