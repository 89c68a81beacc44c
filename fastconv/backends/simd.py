"""Explicit SIMD vectors for numba kernels: a vector type and the intrinsics that use it.

Numba vectorises a contiguous innermost loop by itself, but it cannot keep a *block* of results
in registers across an outer loop: a convolution's tile of output accumulators goes back to memory
after every input channel. Here a small numba type, :class:`Vector`, has an LLVM vector
(``<16 x float>``, ``<8 x double>``...) as its data model, and ``numba.extending.intrinsic``
functions emit the LLVM IR that loads, combines and stores such vectors. A kernel's vector locals
are then SSA values that LLVM keeps in registers, and a tuple of them (a register block) survives
any loop.

One width per process
    :data:`VECTOR_BYTES` is the widest vector register of the CPU that numba compiles for (64 with
    AVX-512, 32 with AVX/AVX2, 16 with SSE or any other architecture) and
    :data:`VECTOR_REGISTERS` how many of them there are (32 with AVX-512 or on AArch64, else 16).
    Both are found once, by asking LLVM to compile a probe with the CPU name and features numba
    itself uses (so ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` are honoured and nothing assumes
    AVX-512). :func:`lanes` gives the lanes of one vector for a dtype, and kernels size their
    register blocks from :data:`VECTOR_REGISTERS`. Numba's on-disk cache is keyed by the same CPU
    name and features, so cached kernels always match these constants.

The intrinsics (usable only inside ``@njit`` functions)
    ``load(a, i)`` / ``store(a, i, v)``
        the ``lanes`` elements ``a.flat[i:i + lanes]`` of a C-contiguous float32/float64 array.
        No bounds check: the caller guarantees ``0 <= i`` and ``i + lanes <= a.size``.
    ``load_lanes(a, i, lo, hi)`` / ``store_lanes(a, i, v, lo, hi)``
        only lanes ``lo <= t < hi`` (``a.flat[i + t]``); the other lanes load as 0 and are not
        stored, and their addresses are never touched (``llvm.masked.load`` / ``store``), so
        tails need no padding. Only the touched lanes must be inside the array.
    ``broadcast(s)``, ``zero(a)``
        every lane ``s`` (a float32/float64 scalar) / 0 in ``a``'s dtype.
    ``fma(a, b, c)``
        ``a * b + c`` lane by lane, fused where the CPU has FMA (``llvm.fmuladd``: a single
        ``vfmadd`` on AVX2/AVX-512, a multiply and an add on plain SSE instead of a libm call).
    ``add``, ``mul``, ``maximum``
        lane by lane (``maximum`` ignores a NaN operand like ``numpy.fmax``).
    ``hsum(v)``
        the sum of the lanes (a pairwise tree of shuffles).
    ``even_odd(v0, v1)``
        the even and the odd elements of the ``2 · lanes`` elements ``v0, v1`` (a stride-2
        deinterleave: two shuffles).
    ``block_zero(rows, cols, a)``
        a register block: a ``rows``-tuple of ``cols``-tuples of zero vectors (``rows`` and
        ``cols`` compile-time constants, e.g. closure or global ints).
    ``block_load(a, i, like)`` / ``block_store(a, i, acc)``
        a block (shaped like ``like``) as ``rows · cols`` consecutive vectors from / to
        ``a.flat[i:]``, to keep partial sums between passes of a split reduction.
    ``block_fma(acc, b, bi, bstep, v, vi, vstep)``
        the outer-product step of a matrix-multiply microkernel on a register block::

            acc[m][n] += broadcast(b.flat[bi + m * bstep]) * load(v, vi + n * vstep)

        ``rows`` broadcast scalars, ``cols`` vector loads, ``rows * cols`` fused multiply-adds.
    ``block_fma_loop(acc, b, bi, brow, bvalid, v, vi, vstep, offsets, count, stride)``
        ``block_fma`` over a whole reduction, as one loop that LLVM is told not to unroll
        (unrolled, the block no longer fits the registers). Row ``m`` of the broadcast operand
        is the run ``b.flat[bi + min(m, bvalid - 1) · brow:]`` (rows past ``bvalid`` repeat the
        last valid one, so a block may overhang a matrix's last row without reading past it),
        and step ``s`` of the reduction reads element ``s`` of every row::

            s = 0
            for c in range(count): for t in range(len(offsets)):
                acc[m][n] += b.flat[bi + min(m, bvalid - 1)·brow + s]
                             · load(v, vi + c·stride + offsets[t] + n·vstep)
                s += 1
    ``block_dot_loop(acc, a, ai, arow, avalid, v, vi, voffsets, vfirst, count)``
        the reduction of a weight gradient: both operands are vectors, ``rows`` of ``a`` and
        ``cols`` of ``v``, and every step multiplies each ``a`` vector by each ``v`` vector, lane
        by lane (the lanes are ``count`` consecutive vectors of a sum; add them up at the end)::

            for s in range(count):
                acc[m][n] += load(a, ai + min(m, avalid - 1)·arow + s·lanes)
                             · load(v, vi + voffsets[vfirst + n] + s·lanes)

        ``rows + cols`` loads and ``rows · cols`` fused multiply-adds a step, one loop that LLVM
        is told not to unroll; rows past ``avalid`` repeat the last valid one (discarded).
    ``block_stencil(acc, w, wi, x, base, pitch, height, width, top, left, geometry)``
        a 2-D stencil on one image plane (``height × width`` at ``x.flat[base]``, rows ``pitch``
        apart), every tap unrolled (``geometry = (kh, kw, s_h, s_w, d_h, d_w)``, compile-time,
        ``s_w`` 1 or 2); block row ``r`` is output row ``r``, lane ``t`` of vector ``n`` output
        column ``n · lanes + t``::

            acc[r][n] += sum_(u, v) w.flat[wi + u·kw + v] ·
                         X(top + r·s_h + u·d_h, left + s_w·(n·lanes + t) + v·d_w)

        where ``X(y, z)`` is the plane's pixel. Every input vector is loaded once and used by
        all the block rows that read it. ``block_stencil`` assumes every pixel it reads is inside
        the plane; ``block_stencil_edge`` reads pixels outside as 0 (masked loads, never
        touching them), so ``0 · w`` is added exactly as a zero-padded input would.

Examples
--------
>>> import numpy as np
>>> from numba import njit
>>> from fastconv.backends import simd
>>> @njit
... def axpy(alpha, x, y):  # y += alpha * x on whole vectors, then the tail lanes
...     step = simd.lanes(x.dtype)
...     a = simd.broadcast(alpha)
...     i = 0
...     while i + step <= x.size:
...         simd.store(y, i, simd.fma(a, simd.load(x, i), simd.load(y, i)))
...         i += step
...     tail = x.size - i
...     simd.store_lanes(y, i, simd.fma(a, simd.load_lanes(x, i, 0, tail), simd.load_lanes(y, i, 0, tail)),
...                      0, tail)
>>> x, y = np.arange(37.0), np.ones(37)
>>> axpy(2.0, x, y)
>>> bool((y == 2 * np.arange(37.0) + 1).all())
True
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, models, overload, register_model

__all__ = ["VECTOR_BYTES", "VECTOR_REGISTERS", "SOURCE_VERSION", "Vector", "lanes", "load", "store", "load_lanes",
           "store_lanes", "broadcast", "zero", "fma", "add", "mul", "maximum", "hsum", "even_odd", "block_zero",
           "block_load", "block_store", "block_fma", "block_fma_loop", "block_dot_loop", "block_stencil", "block_stencil_edge"]


def _probe_target() -> tuple[int, int]:
    """(vector bytes, vector registers) of the CPU numba compiles for, as LLVM sees it."""
    try:
        import llvmlite.binding as llvm
        from numba.core.registry import cpu_target

        triple, cpu_name, features = cpu_target.target_context.codegen().magic_tuple()
        module = llvm.parse_assembly(
            "define void @probe(ptr %a, ptr %b) {\n"
            "  %x = load <16 x float>, ptr %a, align 4\n"
            "  %y = load <16 x float>, ptr %b, align 4\n"
            "  %z = fadd <16 x float> %x, %y\n"
            "  store <16 x float> %z, ptr %a, align 4\n"
            "  ret void\n"
            "}\n")
        module.triple = triple
        machine = llvm.Target.from_triple(triple).create_target_machine(cpu=cpu_name, features=features, opt=2)
        assembly = machine.emit_assembly(module)
    except Exception:  # an LLVM that cannot answer: the narrowest vectors are correct everywhere
        return 16, 16
    if "zmm" in assembly:
        return 64, 32
    if "ymm" in assembly:
        return 32, 16
    return 16, (32 if triple.startswith(("aarch64", "arm64")) else 16)


#: Bytes in the widest vector register numba's target CPU has (16, 32 or 64).
#: Number of such registers (16, or 32 with AVX-512 / on AArch64).
VECTOR_BYTES, VECTOR_REGISTERS = _probe_target()


def _source_version() -> int:
    import hashlib
    from pathlib import Path

    try:
        return int.from_bytes(hashlib.sha256(Path(__file__).read_bytes()).digest()[:8], "little") >> 1
    except OSError:  # no source file (a frozen install): its version is then fixed anyway
        return 0


#: A hash of this module's source. Numba's on-disk cache of a kernel is invalidated by changes
#: to the kernel's own file only, not to the intrinsics it inlines from here: kernels that use
#: them keep this number in their closure, which numba's cache key does include.
SOURCE_VERSION = _source_version()

_FLOATS = (types.float32, types.float64)


def lanes(dtype) -> int:
    """Lanes of one vector for ``dtype`` (float32 or float64), in Python and in ``@njit`` code.

    >>> lanes(np.float64) * 8 == VECTOR_BYTES
    True
    """
    return VECTOR_BYTES // np.dtype(dtype).itemsize


@overload(lanes)
def _lanes_in_numba(dtype):
    scalar = getattr(dtype, "dtype", dtype)  # a dtype object or a scalar class
    if isinstance(scalar, types.NumberClass):
        scalar = scalar.instance_type
    if scalar not in _FLOATS:
        raise TypingError(f"simd.lanes takes float32 or float64, got {dtype}")
    count = VECTOR_BYTES // (scalar.bitwidth // 8)
    return lambda dtype: count


class Vector(types.Type):
    """A numba type: one SIMD vector of ``count`` lanes of ``dtype`` (float32 or float64)."""

    def __init__(self, dtype, count):
        self.dtype, self.count = dtype, count
        super().__init__(name=f"Vector({dtype} x {count})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))


def _vector_type(dtype) -> Vector:
    return Vector(dtype, VECTOR_BYTES // (dtype.bitwidth // 8))


def _check_array(name, array):
    if not (isinstance(array, types.Array) and array.dtype in _FLOATS and array.layout == "C"):
        raise TypingError(f"simd.{name} needs a C-contiguous float32 or float64 array, got {array}")
    return _vector_type(array.dtype)


def _check_integer(name, *values):
    for value in values:
        if not isinstance(value, types.Integer):
            raise TypingError(f"simd.{name} needs integer indices, got {value}")


def _check_vectors(name, *values):
    if not all(isinstance(value, Vector) for value in values) or len(set(values)) != 1:
        raise TypingError(f"simd.{name} needs vectors of one type, got {', '.join(map(str, values))}")
    return values[0]


def _literal_int(name, value) -> int:
    if isinstance(value, types.IntegerLiteral):
        return value.literal_value
    raise TypingError(f"simd.{name} needs a compile-time int (a constant, global or closure int), got {value}")


def _element_pointer(context, builder, array_type, array, index, index_type):
    """Pointer to ``array.flat[index]`` (the array is C-contiguous)."""
    data = context.make_array(array_type)(context, builder, array).data
    offset = context.cast(builder, index, index_type, types.intp)
    return builder.gep(data, [offset])


def _vector_pointer(builder, pointer, vector_llvm_type):
    return builder.bitcast(pointer, vector_llvm_type.as_pointer())


def _lane_mask(builder, count, lo, hi):
    """``<count x i1>``: lanes ``lo <= t < hi`` (lo, hi: intp values)."""
    # compare in 32-bit lanes (one vector compare instead of several): clamp the bounds first
    intp, lane_type = lo.type, ir.IntType(32)

    def clamped(value):
        value = builder.select(builder.icmp_signed("<", value, ir.Constant(intp, -1)), ir.Constant(intp, -1), value)
        value = builder.select(builder.icmp_signed(">", value, ir.Constant(intp, count)), ir.Constant(intp, count),
                               value)
        return _splat(builder, builder.trunc(value, lane_type), count)

    iota = ir.Constant(ir.VectorType(lane_type, count), [ir.Constant(lane_type, t) for t in range(count)])
    return builder.and_(builder.icmp_signed(">=", iota, clamped(lo)), builder.icmp_signed("<", iota, clamped(hi)))


def _splat(builder, scalar, count):
    vector_type = ir.VectorType(scalar.type, count)
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count))


def _llvm_intrinsic(builder, name, vector_llvm_type, argument_types):
    suffix = f"v{vector_llvm_type.count}{'f32' if vector_llvm_type.element == ir.FloatType() else 'f64'}"
    function_type = ir.FunctionType(vector_llvm_type, argument_types)
    return cgutils.get_or_insert_function(builder.module, function_type, f"llvm.{name}.{suffix}")


def _masked_intrinsic(builder, kind, vector_llvm_type):
    suffix = f"v{vector_llvm_type.count}{'f32' if vector_llvm_type.element == ir.FloatType() else 'f64'}.p0"
    mask_type = ir.VectorType(ir.IntType(1), vector_llvm_type.count)
    pointer = vector_llvm_type.as_pointer()
    # the (pointer, alignment, mask, ...) form: newer LLVMs upgrade it when they parse the module
    if kind == "load":
        function_type = ir.FunctionType(vector_llvm_type, [pointer, ir.IntType(32), mask_type, vector_llvm_type])
    else:
        function_type = ir.FunctionType(ir.VoidType(), [vector_llvm_type, pointer, ir.IntType(32), mask_type])
    return cgutils.get_or_insert_function(builder.module, function_type, f"llvm.masked.{kind}.{suffix}")


# ---------------------------------------------------------------------------------------------
# loads and stores


@intrinsic
def load(typingctx, array, index):
    vector = _check_array("load", array)
    _check_integer("load", index)

    def codegen(context, builder, signature, arguments):
        llvm_type = context.get_value_type(vector)
        pointer = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1],
                                   signature.args[1])
        return builder.load(_vector_pointer(builder, pointer, llvm_type), align=vector.dtype.bitwidth // 8)

    return vector(array, index), codegen


@intrinsic
def store(typingctx, array, index, value):
    vector = _check_array("store", array)
    _check_integer("store", index)
    if value != vector:
        raise TypingError(f"simd.store of {value} into an array of {array.dtype}: expected {vector}")

    def codegen(context, builder, signature, arguments):
        llvm_type = context.get_value_type(vector)
        pointer = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1],
                                   signature.args[1])
        builder.store(arguments[2], _vector_pointer(builder, pointer, llvm_type), align=vector.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


@intrinsic
def load_lanes(typingctx, array, index, lo, hi):
    vector = _check_array("load_lanes", array)
    _check_integer("load_lanes", index, lo, hi)

    def codegen(context, builder, signature, arguments):
        llvm_type = context.get_value_type(vector)
        pointer = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1],
                                   signature.args[1])
        low = context.cast(builder, arguments[2], signature.args[2], types.intp)
        high = context.cast(builder, arguments[3], signature.args[3], types.intp)
        mask = _lane_mask(builder, vector.count, low, high)
        function = _masked_intrinsic(builder, "load", llvm_type)
        alignment = ir.Constant(ir.IntType(32), vector.dtype.bitwidth // 8)
        return builder.call(function, [_vector_pointer(builder, pointer, llvm_type), alignment, mask,
                                       ir.Constant(llvm_type, None)])

    return vector(array, index, lo, hi), codegen


@intrinsic
def store_lanes(typingctx, array, index, value, lo, hi):
    vector = _check_array("store_lanes", array)
    _check_integer("store_lanes", index, lo, hi)
    if value != vector:
        raise TypingError(f"simd.store_lanes of {value} into an array of {array.dtype}: expected {vector}")

    def codegen(context, builder, signature, arguments):
        llvm_type = context.get_value_type(vector)
        pointer = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1],
                                   signature.args[1])
        low = context.cast(builder, arguments[3], signature.args[3], types.intp)
        high = context.cast(builder, arguments[4], signature.args[4], types.intp)
        mask = _lane_mask(builder, vector.count, low, high)
        function = _masked_intrinsic(builder, "store", llvm_type)
        alignment = ir.Constant(ir.IntType(32), vector.dtype.bitwidth // 8)
        builder.call(function, [arguments[2], _vector_pointer(builder, pointer, llvm_type), alignment, mask])
        return context.get_dummy_value()

    return types.none(array, index, value, lo, hi), codegen


# ---------------------------------------------------------------------------------------------
# making vectors


@intrinsic
def broadcast(typingctx, scalar):
    if scalar not in _FLOATS:
        raise TypingError(f"simd.broadcast takes a float32 or float64 scalar, got {scalar}")
    vector = _vector_type(scalar)

    def codegen(context, builder, signature, arguments):
        return _splat(builder, arguments[0], vector.count)

    return vector(scalar), codegen


@intrinsic
def zero(typingctx, array):
    vector = _check_array("zero", array) if isinstance(array, types.Array) else None
    if vector is None:
        raise TypingError(f"simd.zero takes an array whose dtype the vector takes, got {array}")

    def codegen(context, builder, signature, arguments):
        return ir.Constant(context.get_value_type(vector), None)

    return vector(array), codegen


# ---------------------------------------------------------------------------------------------
# arithmetic


def _binary(name, emit):
    def typer(typingctx, a, b):
        vector = _check_vectors(name, a, b)

        def codegen(context, builder, signature, arguments):
            return emit(builder, *arguments)

        return vector(a, b), codegen

    typer.__name__ = name
    return intrinsic(typer)


add = _binary("add", lambda builder, a, b: builder.fadd(a, b))
mul = _binary("mul", lambda builder, a, b: builder.fmul(a, b))
maximum = _binary("maximum", lambda builder, a, b: builder.call(
    _llvm_intrinsic(builder, "maxnum", a.type, [a.type, a.type]), [a, b]))


def _fused(builder, a, b, c):
    return builder.call(_llvm_intrinsic(builder, "fmuladd", a.type, [a.type] * 3), [a, b, c])


def _outer_fma(builder, acc, lefts, rights):
    """``acc[m][n] += lefts[m] * rights[n]`` on a block of accumulators (an outer product of
    vectors, one fused multiply-add per accumulator): the step every register-block loop takes."""
    result = acc
    for m, left in enumerate(lefts):
        row = builder.extract_value(acc, m)
        for n, right in enumerate(rights):
            row = builder.insert_value(row, _fused(builder, left, right, builder.extract_value(row, n)), n)
        result = builder.insert_value(result, row, m)
    return result


@intrinsic
def fma(typingctx, a, b, c):
    vector = _check_vectors("fma", a, b, c)

    def codegen(context, builder, signature, arguments):
        return _fused(builder, *arguments)

    return vector(a, b, c), codegen


@intrinsic
def even_odd(typingctx, first, second):
    vector = _check_vectors("even_odd", first, second)

    def codegen(context, builder, signature, arguments):
        def lanes_from(start):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), vector.count),
                               list(range(start, 2 * vector.count, 2)))
            return builder.shuffle_vector(arguments[0], arguments[1], mask)

        pair = context.get_value_type(signature.return_type)
        result = builder.insert_value(ir.Constant(pair, ir.Undefined), lanes_from(0), 0)
        return builder.insert_value(result, lanes_from(1), 1)

    return types.UniTuple(vector, 2)(first, second), codegen


@intrinsic
def hsum(typingctx, value):
    vector = _check_vectors("hsum", value)

    def codegen(context, builder, signature, arguments):
        current, width = arguments[0], vector.count
        while width > 1:  # add the upper half onto the lower half
            width //= 2
            lower = builder.shuffle_vector(current, current, ir.Constant(
                ir.VectorType(ir.IntType(32), width), list(range(width))))
            upper = builder.shuffle_vector(current, current, ir.Constant(
                ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width))))
            current = builder.fadd(lower, upper)
        return builder.extract_element(current, ir.Constant(ir.IntType(32), 0))

    return vector.dtype(value), codegen


# ---------------------------------------------------------------------------------------------
# register blocks


@intrinsic
def block_zero(typingctx, rows, cols, array):
    vector = _check_array("block_zero", array)
    row_count, col_count = _literal_int("block_zero", rows), _literal_int("block_zero", cols)
    if row_count < 1 or col_count < 1:
        raise TypingError(f"simd.block_zero needs positive sizes, got {row_count} x {col_count}")
    block = types.UniTuple(types.UniTuple(vector, col_count), row_count)

    def codegen(context, builder, signature, arguments):
        return context.get_constant_null(block)

    return block(rows, cols, array), codegen


def _block_shape(name, block):
    if not (isinstance(block, types.UniTuple) and isinstance(block.dtype, types.UniTuple)
            and isinstance(block.dtype.dtype, Vector)):
        raise TypingError(f"simd.{name} needs a register block from simd.block_zero, got {block}")
    return block.dtype.dtype, block.count, block.dtype.count


@intrinsic
def block_fma(typingctx, block, b, b_index, b_step, v, v_index, v_step):
    vector, rows, cols = _block_shape("block_fma", block)
    if _check_array("block_fma", b) != vector or _check_array("block_fma", v) != vector:
        raise TypingError(f"simd.block_fma: arrays {b}, {v} do not match the block's {vector}")
    _check_integer("block_fma", b_index, b_step, v_index, v_step)

    def codegen(context, builder, signature, arguments):
        acc, b_array, b_at, b_by, v_array, v_at, v_by = arguments
        argument_types = signature.args
        llvm_type = context.get_value_type(vector)
        alignment = vector.dtype.bitwidth // 8

        def as_intp(value, position):
            return context.cast(builder, value, argument_types[position], types.intp)

        b_at, b_by, v_at, v_by = as_intp(b_at, 2), as_intp(b_by, 3), as_intp(v_at, 5), as_intp(v_by, 6)
        b_data = context.make_array(argument_types[1])(context, builder, b_array).data
        v_data = context.make_array(argument_types[4])(context, builder, v_array).data
        scalars = []
        for m in range(rows):
            at = builder.add(b_at, builder.mul(b_by, ir.Constant(b_at.type, m)))
            scalars.append(_splat(builder, builder.load(builder.gep(b_data, [at]), align=alignment), vector.count))
        loaded = []
        for n in range(cols):
            at = builder.add(v_at, builder.mul(v_by, ir.Constant(v_at.type, n)))
            loaded.append(builder.load(_vector_pointer(builder, builder.gep(v_data, [at]), llvm_type),
                                       align=alignment))
        return _outer_fma(builder, acc, scalars, loaded)

    return block(block, b, b_index, b_step, v, v_index, v_step), codegen


@intrinsic
def block_load(typingctx, array, index, like):
    vector, rows, cols = _block_shape("block_load", like)
    if _check_array("block_load", array) != vector:
        raise TypingError(f"simd.block_load: array {array} does not match the block's {vector}")
    _check_integer("block_load", index)

    def codegen(context, builder, signature, arguments):
        llvm_type = context.get_value_type(vector)
        start = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1], signature.args[1])
        result = ir.Constant(context.get_value_type(like), ir.Undefined)
        for m in range(rows):
            row = builder.extract_value(result, m)
            for n in range(cols):
                pointer = builder.gep(start, [ir.Constant(ir.IntType(64), (m * cols + n) * vector.count)])
                row = builder.insert_value(row, builder.load(_vector_pointer(builder, pointer, llvm_type),
                                                             align=vector.dtype.bitwidth // 8), n)
            result = builder.insert_value(result, row, m)
        return result

    return like(array, index, like), codegen


@intrinsic
def block_store(typingctx, array, index, block):
    vector, rows, cols = _block_shape("block_store", block)
    if _check_array("block_store", array) != vector:
        raise TypingError(f"simd.block_store: array {array} does not match the block's {vector}")
    _check_integer("block_store", index)

    def codegen(context, builder, signature, arguments):
        llvm_type = context.get_value_type(vector)
        start = _element_pointer(context, builder, signature.args[0], arguments[0], arguments[1], signature.args[1])
        for m in range(rows):
            row = builder.extract_value(arguments[2], m)
            for n in range(cols):
                pointer = builder.gep(start, [ir.Constant(ir.IntType(64), (m * cols + n) * vector.count)])
                builder.store(builder.extract_value(row, n), _vector_pointer(builder, pointer, llvm_type),
                              align=vector.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, block), codegen


def _no_unroll(module):
    """A loop ID (``!llvm.loop``) asking LLVM not to unroll: the node must list itself first."""
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = module.add_metadata([disable, ir.MetaDataString(module, f"fastconv.loop.{len(module.metadata)}")])
    loop_id.operands = (loop_id,) + loop_id.operands
    return loop_id


def _counted_loop(builder, count, body):
    """Emit ``for index in range(count): body(index)`` (intp ``count``), never unrolled."""
    before = builder.basic_block
    header = builder.append_basic_block("simd.loop.header")
    inside = builder.append_basic_block("simd.loop.body")
    after = builder.append_basic_block("simd.loop.end")
    builder.branch(header)
    builder.position_at_end(header)
    index = builder.phi(count.type)
    index.add_incoming(ir.Constant(count.type, 0), before)
    builder.cbranch(builder.icmp_signed("<", index, count), inside, after)
    builder.position_at_end(inside)
    body(index)
    index.add_incoming(builder.add(index, ir.Constant(count.type, 1)), builder.basic_block)
    builder.branch(header).set_metadata("llvm.loop", _no_unroll(builder.module))
    builder.position_at_end(after)


@intrinsic
def block_fma_loop(typingctx, block, b, b_index, b_row_stride, b_rows, v, v_index, v_step, offsets, count, stride):
    vector, rows, cols = _block_shape("block_fma_loop", block)
    if _check_array("block_fma_loop", b) != vector or _check_array("block_fma_loop", v) != vector:
        raise TypingError(f"simd.block_fma_loop: arrays {b}, {v} do not match the block's {vector}")
    if not (isinstance(offsets, types.Array) and isinstance(offsets.dtype, types.Integer) and offsets.ndim == 1
            and offsets.layout == "C"):
        raise TypingError(f"simd.block_fma_loop needs a contiguous 1-D integer array of offsets, got {offsets}")
    _check_integer("block_fma_loop", b_index, b_row_stride, b_rows, v_index, v_step, count, stride)

    def codegen(context, builder, signature, arguments):
        acc, b_array = arguments[0], arguments[1]
        v_array, offset_array = arguments[5], arguments[8]
        argument_types = signature.args

        def as_intp(position):
            return context.cast(builder, arguments[position], argument_types[position], types.intp)

        b_at, b_by, b_valid = as_intp(2), as_intp(3), as_intp(4)
        v_at, v_by, outer, outer_stride = as_intp(6), as_intp(7), as_intp(9), as_intp(10)
        intp = b_at.type
        llvm_type = context.get_value_type(vector)
        alignment = vector.dtype.bitwidth // 8
        b_data = context.make_array(argument_types[1])(context, builder, b_array).data
        v_data = context.make_array(argument_types[5])(context, builder, v_array).data
        offsets_struct = context.make_array(argument_types[8])(context, builder, offset_array)
        taps = builder.extract_value(offsets_struct.shape, 0)
        offset_type = argument_types[8].dtype
        # row m reads b row min(m, b_rows - 1): rows past the last valid one repeat it (and are discarded)
        last = builder.sub(b_valid, ir.Constant(intp, 1))
        row_starts = [builder.add(b_at, builder.mul(b_by, builder.select(
            builder.icmp_signed("<", ir.Constant(intp, m), last), ir.Constant(intp, m), last)))
            for m in range(rows)]
        acc_slot = cgutils.alloca_once_value(builder, acc)
        step_slot = cgutils.alloca_once_value(builder, ir.Constant(intp, 0))

        def channel(c):
            channel_at = builder.add(v_at, builder.mul(c, outer_stride))

            def tap(t):
                element = builder.load(builder.gep(offsets_struct.data, [t]))
                at = builder.add(channel_at, context.cast(builder, element, offset_type, types.intp))
                step = builder.load(step_slot)
                current = builder.load(acc_slot)
                scalars = [_splat(builder, builder.load(builder.gep(b_data, [builder.add(start, step)]),
                                                        align=alignment), vector.count) for start in row_starts]
                loaded = [builder.load(_vector_pointer(builder, builder.gep(v_data, [builder.add(
                    at, builder.mul(v_by, ir.Constant(intp, n)))]), llvm_type), align=alignment)
                    for n in range(cols)]
                builder.store(_outer_fma(builder, current, scalars, loaded), acc_slot)
                builder.store(builder.add(step, ir.Constant(intp, 1)), step_slot)

            _counted_loop(builder, taps, tap)

        _counted_loop(builder, outer, channel)
        return builder.load(acc_slot)

    return block(block, b, b_index, b_row_stride, b_rows, v, v_index, v_step, offsets, count, stride), codegen


@intrinsic
def block_dot_loop(typingctx, block, a, a_index, a_row_stride, a_rows, v, v_index, v_offsets, v_first, count):
    vector, rows, cols = _block_shape("block_dot_loop", block)
    if _check_array("block_dot_loop", a) != vector or _check_array("block_dot_loop", v) != vector:
        raise TypingError(f"simd.block_dot_loop: arrays {a}, {v} do not match the block's {vector}")
    if not (isinstance(v_offsets, types.Array) and isinstance(v_offsets.dtype, types.Integer)
            and v_offsets.ndim == 1 and v_offsets.layout == "C"):
        raise TypingError(f"simd.block_dot_loop needs a contiguous 1-D integer array of offsets, got {v_offsets}")
    _check_integer("block_dot_loop", a_index, a_row_stride, a_rows, v_index, v_first, count)

    def codegen(context, builder, signature, arguments):
        argument_types = signature.args

        def as_intp(position):
            return context.cast(builder, arguments[position], argument_types[position], types.intp)

        a_at, a_by, a_valid, v_at, first, steps = (as_intp(i) for i in (2, 3, 4, 6, 8, 9))
        intp = a_at.type
        llvm_type = context.get_value_type(vector)
        alignment = vector.dtype.bitwidth // 8
        a_data = context.make_array(argument_types[1])(context, builder, arguments[1]).data
        v_data = context.make_array(argument_types[5])(context, builder, arguments[5]).data
        offsets = context.make_array(argument_types[7])(context, builder, arguments[7]).data
        offset_type = argument_types[7].dtype
        last = builder.sub(a_valid, ir.Constant(intp, 1))
        # every operand's first element, found once: the loop then only adds s·lanes to each
        a_starts = [builder.gep(a_data, [builder.add(a_at, builder.mul(a_by, builder.select(
            builder.icmp_signed("<", ir.Constant(intp, m), last), ir.Constant(intp, m), last)))])
            for m in range(rows)]
        v_starts = []
        for n in range(cols):
            element = builder.load(builder.gep(offsets, [builder.add(first, ir.Constant(intp, n))]))
            v_starts.append(builder.gep(v_data, [builder.add(v_at, context.cast(builder, element, offset_type,
                                                                                  types.intp))]))
        acc_slot = cgutils.alloca_once_value(builder, arguments[0])

        def step(s):
            shift = builder.mul(s, ir.Constant(intp, vector.count))
            current = builder.load(acc_slot)
            a_vectors = [builder.load(_vector_pointer(builder, builder.gep(start, [shift]), llvm_type),
                                      align=alignment) for start in a_starts]
            v_vectors = [builder.load(_vector_pointer(builder, builder.gep(start, [shift]), llvm_type),
                                      align=alignment) for start in v_starts]
            builder.store(_outer_fma(builder, current, a_vectors, v_vectors), acc_slot)

        _counted_loop(builder, steps, step)
        return builder.load(acc_slot)

    return block(block, a, a_index, a_row_stride, a_rows, v, v_index, v_offsets, v_first, count), codegen


def _literal_ints(name, value, count) -> tuple:
    elements = getattr(value, "types", None)
    if elements is None or len(elements) != count or not all(isinstance(e, types.IntegerLiteral) for e in elements):
        raise TypingError(f"simd.{name} needs a compile-time tuple of {count} ints, got {value}")
    return tuple(e.literal_value for e in elements)


def _stencil_typer(name, masked):
    def typer(typingctx, block, w, w_index, x, base, pitch, height, width, top, left, geometry):
        vector, rows, cols = _block_shape(name, block)
        if _check_array(name, w) != vector or _check_array(name, x) != vector:
            raise TypingError(f"simd.{name}: arrays {w}, {x} do not match the block's {vector}")
        _check_integer(name, w_index, base, pitch, height, width, top, left)
        kh, kw, sh, sw, dh, dw = _literal_ints(name, geometry, 6)
        if sw not in (1, 2) or min(kh, kw, sh, dh, dw) < 1:
            raise TypingError(f"simd.{name} takes column stride 1 or 2 and positive sizes, got {geometry}")

        def codegen(context, builder, signature, arguments):
            argument_types = signature.args
            acc = arguments[0]
            w_at, base_at, row_pitch, rows_in, cols_in, y0, z0 = (
                context.cast(builder, arguments[i], argument_types[i], types.intp) for i in (2, 4, 5, 6, 7, 8, 9))
            intp = w_at.type
            llvm_type = context.get_value_type(vector)
            alignment = vector.dtype.bitwidth // 8
            count = vector.count
            w_data = context.make_array(argument_types[1])(context, builder, arguments[1]).data
            x_data = context.make_array(argument_types[3])(context, builder, arguments[3]).data

            def weight(t):
                return _splat(builder, builder.load(builder.gep(w_data, [builder.add(w_at, ir.Constant(intp, t))]),
                                                    align=alignment), count)

            masked_load = _masked_intrinsic(builder, "load", llvm_type) if masked else None
            zero_vector = ir.Constant(llvm_type, None)
            align_arg = ir.Constant(ir.IntType(32), alignment)

            def load(row_start, row_ok, z):
                """x[row_start + z + t] for lanes t; 0 where the column z + t or the row is outside."""
                pointer = _vector_pointer(builder, builder.gep(x_data, [builder.add(row_start, z)]), llvm_type)
                if not masked:
                    return builder.load(pointer, align=alignment)
                low = builder.sub(ir.Constant(intp, 0), z)
                mask = _lane_mask(builder, count, low, builder.add(low, cols_in))
                mask = builder.and_(mask, _splat(builder, row_ok, count))
                return builder.call(masked_load, [pointer, align_arg, mask, zero_vector])

            # input row e (from the block's top row y0) is read by output row r through kernel
            # row u when r·s_h + u·d_h == e. Per column offset (outermost), the weights of that
            # kernel column are loaded once and stay in registers; each input vector is then loaded
            # once, used by all its readers at once and dead, so what stays live is the
            # accumulators, one kernel column of weights and one column mask
            readers = {}
            for r in range(rows):
                for u in range(kh):
                    for v in range(kw):
                        readers.setdefault((v * dw, r * sh + u * dh), []).append((r, u * kw + v))
            offsets = sorted({offset for offset, _ in readers})
            input_rows = sorted({e for _, e in readers})
            row_starts, row_flags = {}, {}
            for e in input_rows:
                y = builder.add(y0, ir.Constant(intp, e))
                row_starts[e] = builder.add(base_at, builder.mul(y, row_pitch))
                if masked:
                    row_flags[e] = builder.and_(builder.icmp_signed(">=", y, ir.Constant(intp, 0)),
                                                builder.icmp_signed("<", y, rows_in))
            even = ir.Constant(ir.VectorType(ir.IntType(32), count), list(range(0, 2 * count, 2)))
            odd = ir.Constant(ir.VectorType(ir.IntType(32), count), list(range(1, 2 * count, 2)))
            sums = [[builder.extract_value(builder.extract_value(acc, r), n) for n in range(cols)]
                    for r in range(rows)]
            done = set()
            for offset in offsets:
                if offset in done:
                    continue
                # with s_w = 2 a pair of vectors at offset also holds offset + 1 (the odd columns)
                served = [offset] + ([offset + 1] if sw == 2 and offset + 1 in offsets else [])
                done.update(served)
                column_weights = {tap: weight(tap) for o in served for e in input_rows
                                  for _, tap in readers.get((o, e), ())}
                for n in range(cols):
                    z = builder.add(z0, ir.Constant(intp, n * count * sw + offset))
                    for e in input_rows:
                        if not any((o, e) in readers for o in served):
                            continue
                        if sw == 1:
                            columns = {offset: load(row_starts[e], row_flags.get(e), z)}
                        else:
                            pair = (load(row_starts[e], row_flags.get(e), z),
                                    load(row_starts[e], row_flags.get(e), builder.add(z, ir.Constant(intp, count))))
                            columns = {offset: builder.shuffle_vector(*pair, even),
                                       offset + 1: builder.shuffle_vector(*pair, odd)}
                        for o in served:
                            for r, tap in readers.get((o, e), ()):
                                sums[r][n] = _fused(builder, column_weights[tap], columns[o], sums[r][n])
            result = acc
            for r in range(rows):
                row = builder.extract_value(acc, r)
                for n in range(cols):
                    row = builder.insert_value(row, sums[r][n], n)
                result = builder.insert_value(result, row, r)
            return result

        return block(block, w, w_index, x, base, pitch, height, width, top, left, geometry), codegen

    typer.__name__ = name
    return intrinsic(typer)


block_stencil = _stencil_typer("block_stencil", masked=False)
block_stencil_edge = _stencil_typer("block_stencil_edge", masked=True)
