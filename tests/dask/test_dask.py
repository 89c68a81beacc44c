"""fastconv.dask against in-memory fastconv (conv2d) and scipy.signal (convolve2d, correlate2d).

Chunkings are drawn to be awkward: uneven, single-pixel, barely larger than the halo, strides that
do not divide the chunk size. With the ``naive`` backend every block sums in the same order as the
in-memory call, so the results must be identical, not merely close.
"""

import os
import pickle
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, settings
from scipy import signal
from hypothesis import strategies as st

import dask
import dask.array as da
from distributed import Client, LocalCluster  # the dask extra, installed by CI: fail, never skip, without it
import fastconv
import fastconv.dask
from fastconv.dask import plan_axis, stride_aligned_chunks
from reference import relative_error
from strategies import conv_problems


@st.composite
def chunkings(draw, shape):
    """Chunks for ``shape``: per axis, cuts at a random subset of positions (often every pixel)."""
    chunks = []
    for size in shape:
        cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=size - 1))) if size > 1 else []
        edges = [0] + cuts + [size]
        chunks.append(tuple(b - a for a, b in zip(edges, edges[1:])))
    return tuple(chunks)


def computed_blocks(y):
    """Compute ``y`` block by block, check each block has the shape its chunks promise, join them."""
    blocks = np.empty(y.numblocks, dtype=object)
    computed = dask.compute(*y.to_delayed().ravel())
    for index, block in zip(np.ndindex(*y.numblocks), computed):
        expected = tuple(c[i] for c, i in zip(y.chunks, index))
        assert block.shape == expected, f"block {index}: shape {block.shape}, chunks say {expected}"
        blocks[index] = block
    return np.block(blocks.tolist())


@given(problem=conv_problems(max_size=12), data=st.data())
def test_conv2d_equals_in_memory(problem, data):
    chunks = data.draw(chunkings(problem.x.shape))
    x = da.from_array(problem.x, chunks=chunks)
    y = fastconv.dask.conv2d(x, problem.weight, problem.bias, backend="naive", **problem.kwargs)
    expected = fastconv.conv2d(problem.x, problem.weight, problem.bias, backend="naive", **problem.kwargs)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    assert y.chunks[0] == chunks[0]  # batch chunks map independently
    np.testing.assert_array_equal(computed_blocks(y), expected)


@settings(max_examples=15)
@given(problem=conv_problems(max_size=12), data=st.data())
def test_conv2d_auto_backend_and_unbatched_input(problem, data):
    x = problem.x[0]
    chunks = data.draw(chunkings(x.shape))
    y = fastconv.dask.conv2d(da.from_array(x, chunks=chunks), problem.weight, problem.bias, **problem.kwargs)
    expected = fastconv.conv2d(x, problem.weight, problem.bias, **problem.kwargs)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    assert relative_error(y.compute(), expected) <= 1e-5


@given(
    image_shape=st.tuples(st.integers(1, 14), st.integers(1, 14)),
    kernel_shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    data=st.data(),
)
def test_conv2d_single_channel_image(image_shape, kernel_shape, stride, dilation, padding_mode, data):
    extent = [dilation * (k - 1) + 1 for k in kernel_shape]
    image_shape = tuple(max(s, e) for s, e in zip(image_shape, extent))
    padding = tuple((e - 1) // 2 for e in extent)
    if padding_mode == "reflect":
        image_shape = tuple(max(s, p + 1) for s, p in zip(image_shape, padding))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    image, kernel = rng.standard_normal(image_shape), rng.standard_normal(kernel_shape)
    x = da.from_array(image, chunks=data.draw(chunkings(image_shape)))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode, backend="naive")
    y = fastconv.dask.conv2d(x, kernel, 0.5, **kwargs)
    expected = fastconv.conv2d(image[None], kernel[None, None], np.array([0.5]), **kwargs)[0]
    np.testing.assert_array_equal(computed_blocks(y), expected)
    valid = fastconv.dask.conv2d(x, kernel, backend="naive")  # against scipy, independently
    assert relative_error(valid.compute(), signal.correlate2d(image, kernel, mode="valid")) <= 1e-12


@given(
    image_shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    kernel_shape=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    mode=st.sampled_from(["full", "same", "valid"]),
    boundary=st.sampled_from(["fill", "wrap", "symm"]),
    fillvalue=st.sampled_from([0, 1.5, -2]),
    dtype=st.sampled_from([np.float64, np.complex128, np.int16]),
    data=st.data(),
)
def test_convolve2d_and_correlate2d_match_scipy(image_shape, kernel_shape, mode, boundary, fillvalue, dtype, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))

    def sample(shape):
        values = rng.standard_normal(shape)
        if dtype == np.int16:  # exact, wrapping like scipy's int16 arithmetic
            return (values * 3000).astype(np.int16)
        return values + 1j * rng.standard_normal(shape) if dtype == np.complex128 else values

    image, kernel = sample(image_shape), sample(kernel_shape)
    x = da.from_array(image, chunks=data.draw(chunkings(image_shape)))
    # in "valid" mode a kernel larger than the image swaps the operands, as scipy does
    neither_fits = not (all(np.greater_equal(image_shape, kernel_shape))
                        or all(np.less_equal(image_shape, kernel_shape)))
    for ours, theirs in ((fastconv.dask.convolve2d, signal.convolve2d),
                         (fastconv.dask.correlate2d, signal.correlate2d)):
        if mode == "valid" and neither_fits:  # scipy refuses; so must we, at call time
            with pytest.raises(ValueError, match="at least as large"):
                theirs(image, kernel, mode=mode)
            with pytest.raises(ValueError, match="at least as large"):
                ours(x, kernel, mode=mode)
            continue
        y = ours(x, kernel, mode=mode, boundary=boundary, fillvalue=fillvalue)
        expected = theirs(image, kernel, mode=mode, boundary=boundary, fillvalue=fillvalue)
        assert y.shape == expected.shape and y.dtype == expected.dtype
        assert relative_error(computed_blocks(y), expected) <= 1e-10


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.float16, np.complex64])
def test_conv2d_dtype_rules_and_empty_batch_as_in_memory(dtype):
    x = (np.arange(2 * 3 * 10 * 9).reshape(2, 3, 10, 9) % 7).astype(dtype)
    w = np.arange(2 * 3 * 3 * 3).reshape(2, 3, 3, 3).astype(np.float16 if dtype == np.float16 else np.float64)
    for batch in (x, x[:0]):
        y = fastconv.dask.conv2d(da.from_array(batch, chunks=4), w, padding=1, padding_mode="replicate")
        expected = fastconv.conv2d(batch, w, padding=1, padding_mode="replicate")
        assert y.dtype == expected.dtype
        np.testing.assert_array_equal(y.compute(), expected)


def test_convolve2d_keeps_scipy_integer_dtype_and_fill_cast():
    image = np.arange(42).reshape(6, 7)
    kernel = np.array([[1, -2], [3, 4]])
    y = fastconv.dask.convolve2d(da.from_array(image, chunks=3), kernel, mode="same", fillvalue=2.7)
    expected = signal.convolve2d(image, kernel, mode="same", fillvalue=2.7)
    assert y.dtype == expected.dtype == np.int64
    np.testing.assert_array_equal(y.compute(), expected)


@given(
    chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    pad=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    extent=st.integers(1, 12),
    stride=st.integers(1, 4),
)
def test_stride_aligned_chunks_tile_the_output_grid(chunks, pad, extent, stride):
    padded_size = sum(chunks) + sum(pad)
    if padded_size < extent:
        return
    padded, outputs, (before, after) = stride_aligned_chunks(tuple(chunks), *pad, extent, stride)
    assert sum(padded) == padded_size and sum(outputs) == (padded_size - extent) // stride + 1
    assert min(padded) >= max(before, after) and min(outputs) >= 1  # dask can lend every halo
    edges = np.cumsum((0,) + padded)
    first_output = np.cumsum((0,) + outputs)
    for j in range(len(padded)):  # the rows map_overlap hands block j hold exactly its outputs
        top = edges[j] - (before if j > 0 else 0)
        bottom = edges[j + 1] + (after if j < len(padded) - 1 else 0)
        assert top == first_output[j] * stride
        assert (bottom - top - extent) // stride + 1 == outputs[j]
    centre = (extent - 1) // 2
    holds_outputs = chunks[0] + pad[0] > centre and chunks[-1] + pad[1] >= extent - centre
    if stride == 1 and min(chunks) >= max(before, after) and holds_outputs:
        assert padded[1:-1] == tuple(chunks[1:-1])  # at stride 1 the caller's boundaries stay put


def test_chunks_smaller_than_the_halo_are_merged():
    x = np.random.default_rng(5).standard_normal((1, 1, 30, 12))
    w = np.ones((1, 1, 7, 1))
    y = fastconv.dask.conv2d(da.from_array(x, chunks=(1, 1, 1, 12)), w, padding="same", dilation=(2, 1))
    assert y.numblocks[2] <= 30 // 6 + 1  # 1-row chunks merged into blocks that can lend 6-row halos
    np.testing.assert_array_equal(y.compute(), fastconv.conv2d(x, w, padding="same", dilation=(2, 1)))


@given(
    chunks=st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(sum),
    pad=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    extent=st.integers(1, 12),
    stride=st.integers(1, 4),
)
def test_plan_axis_reads_exactly_each_blocks_window(chunks, pad, extent, stride):
    size = sum(chunks)
    if size + sum(pad) < extent:
        return
    plan = plan_axis(tuple(chunks), *pad, extent, stride)
    assert sum(plan.source_chunks) == size and len(plan.source_chunks) == len(plan.out_chunks)
    first_output = 0
    for (start, stop), (before, after), outputs in zip(plan.reads, plan.padding, plan.out_chunks):
        assert 0 <= start <= stop <= size and before >= 0 and after >= 0
        if start < stop:  # the window, on the padded axis, starts at the block's first output
            assert pad[0] + start - before == first_output * stride
        assert (before + stop - start + after - extent) // stride + 1 == outputs
        first_output += outputs
    assert first_output == (size + sum(pad) - extent) // stride + 1


def test_zero_padding_builds_one_task_per_block_and_no_copy_passes():
    x = da.from_array(np.random.default_rng(6).standard_normal((1, 2, 40, 30)), chunks=(1, 2, 10, 15))
    y = fastconv.dask.conv2d(x, np.ones((3, 2, 5, 5)), padding="same", backend="naive")
    layers = list(y.__dask_graph__().layers)
    assert not [name for name in layers if any(word in name for word in ("pad", "concatenate", "overlap"))]
    conv_tasks = [key for key in y.__dask_graph__() if key[0] == y.name]
    assert len(conv_tasks) == 4 * 2


def test_strips_of_an_in_memory_image_are_convolved_in_place(monkeypatch):
    image = np.random.default_rng(7).standard_normal((1, 1, 64, 48))
    seen = []
    real = fastconv.dask.blocks.conv2d_in_memory

    def spy(block, *args, **kwargs):
        seen.append(np.shares_memory(block, image))
        return real(block, *args, **kwargs)

    monkeypatch.setattr(fastconv.dask.blocks, "conv2d_in_memory", spy)
    x = da.from_array(image, chunks=(1, 1, 16, 48))
    image = dict(x.__dask_graph__())[(x.name, 0, 0, 0, 0)].base  # from_array copies, then slices views
    y = fastconv.dask.conv2d(x, np.ones((1, 1, 3, 3)), padding=1, backend="naive")
    np.testing.assert_array_equal(y.compute(scheduler="threads"),
                                  fastconv.conv2d(x.compute(), np.ones((1, 1, 3, 3)), padding=1, backend="naive"))
    assert seen == [True] * 4  # every block read its strip and halo rows where they lie


def test_joined_view_only_joins_pieces_that_lie_side_by_side():
    whole = np.arange(2 * 3 * 8 * 6.0).reshape(2, 3, 8, 6)
    grid = [[whole[:, :, :3, :4], whole[:, :, :3, 4:]], [whole[:, :, 3:, :4], whole[:, :, 3:, 4:]]]
    joined = fastconv.dask.blocks._joined_view(grid)
    assert np.shares_memory(joined, whole) and not joined.flags.writeable
    np.testing.assert_array_equal(joined, whole)
    copies = [[piece.copy() for piece in row] for row in grid]
    assert fastconv.dask.blocks._joined_view(copies) is None
    swapped = [grid[1], grid[0]]
    assert fastconv.dask.blocks._joined_view(swapped) is None
    # single elements are C-contiguous whatever their parent: the view must keep the parent's strides
    elements = [[whole[:1, :1, i:i + 1, j:j + 1] for j in range(3)] for i in range(2)]
    np.testing.assert_array_equal(fastconv.dask.blocks._joined_view(elements), whole[:1, :1, :2, :3])


def _problem(seed=0, shape=(3, 4, 37, 29), kernel=(5, 4, 3, 4)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(kernel), rng.standard_normal(kernel[0])


def test_weights_are_one_graph_key():
    x, w, b = _problem()
    w = w.astype(np.float64) + np.arange(w.size).reshape(w.shape)  # distinctive bytes
    y = fastconv.dask.conv2d(da.from_array(x, chunks=(1, 2, 9, 7)), w, b, stride=2, padding=1)
    graph = dict(y.__dask_graph__())
    holding_weight = [key for key, task in graph.items() if w.tobytes() in pickle.dumps(task)]
    assert len(holding_weight) == 1, holding_weight
    assert y.npartitions > 10


def test_distributed_threads_cluster():
    x, w, b = _problem(1)
    kwargs = dict(stride=(2, 3), padding="same", dilation=(1, 2), padding_mode="reflect", backend="naive")
    expected = fastconv.conv2d(x, w, b, **kwargs)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            y = fastconv.dask.conv2d(da.from_array(x, chunks=(2, 1, 10, 8)), w, b, **kwargs)
            np.testing.assert_array_equal(client.compute(y).result(), expected)
            image = x[0, 0]
            z = fastconv.dask.correlate2d(da.from_array(image, chunks=6), w[0, 0], boundary="symm")
            assert relative_error(client.compute(z).result(), signal.correlate2d(image, w[0, 0], boundary="symm")) < 1e-12


def test_distributed_process_cluster(tmp_path):
    x, w, b = _problem(2, shape=(2, 2, 30, 30), kernel=(3, 2, 3, 3))
    expected = fastconv.conv2d(x, w, b, padding=1, padding_mode="circular", backend="naive")
    np.save(tmp_path / "in.npy", x)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            y = fastconv.dask.conv2d(da.from_array(x, chunks=(1, 2, 11, 16)), w, b, padding=1,
                                     padding_mode="circular", backend="naive")
            np.testing.assert_array_equal(client.compute(y).result(), expected)
            # files read and written by the worker process, a block at a time
            from_file = fastconv.dask.conv2d(da.from_array(fastconv.dask.NpyBlocks(tmp_path / "in.npy"),
                                                           chunks=(1, 2, 11, 16)), w, b, padding=1,
                                             padding_mode="circular", backend="naive")
            da.store(from_file, fastconv.dask.NpyBlocks.create(tmp_path / "out.npy", y.shape, y.dtype))
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_npy_blocks_source_and_target_are_read_and_written_block_by_block(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.standard_normal((1024, 512)).astype(np.float32)  # 2 MiB
    np.save(tmp_path / "in.npy", image)
    source = fastconv.dask.NpyBlocks(tmp_path / "in.npy")
    assert (source.shape, source.dtype, len(source)) == (image.shape, image.dtype, 1024)
    tracemalloc.start()
    try:
        x = da.from_array(source, chunks=(256, -1))  # a whole np.memmap would be copied here
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes / 8
    block = source[10:20, 5:9]
    assert type(block) is np.ndarray and block.flags.writeable  # a copy, not a view of a closed map
    np.testing.assert_array_equal(block, image[10:20, 5:9])
    kernel = rng.standard_normal((5, 5)).astype(np.float32)
    y = fastconv.dask.conv2d(x, kernel, stride=2, padding=3)
    target = fastconv.dask.NpyBlocks.create(tmp_path / "out.npy", y.shape, y.dtype)
    da.store(y, target, lock=False)
    expected = fastconv.conv2d(image[None, None], kernel[None, None], stride=2, padding=3)[0, 0]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_npy_blocks_shapes_as_numpy_takes_them(tmp_path):
    vector = fastconv.dask.NpyBlocks.create(tmp_path / "v.npy", 5, np.float32)  # an int, as np.zeros takes
    assert (vector.shape, len(vector)) == ((5,), 5)
    scalar = fastconv.dask.NpyBlocks.create(tmp_path / "s.npy", (), np.float64)
    with pytest.raises(TypeError, match="0-d"):
        len(scalar)


def test_npy_blocks_name_the_file_and_its_version(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 4)))
    np.save(tmp_path / "b.npy", np.zeros((4, 4)))
    a = fastconv.dask.NpyBlocks(tmp_path / "a.npy")
    assert dask.base.tokenize(a) == dask.base.tokenize(fastconv.dask.NpyBlocks(tmp_path / "a.npy"))
    assert dask.base.tokenize(a) != dask.base.tokenize(fastconv.dask.NpyBlocks(tmp_path / "b.npy"))
    before = dask.base.tokenize(a)
    np.save(tmp_path / "a.npy", np.ones((4, 4)))
    os.utime(tmp_path / "a.npy", ns=(1, 1))  # a rewritten file: its contents may have changed
    assert dask.base.tokenize(a) != before  # so a graph built before does not reuse old results


def test_npy_blocks_keep_reading_the_same_file_after_a_change_of_directory(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "image.npy", np.ones((2, 3)))
    np.save(tmp_path / "b" / "image.npy", np.zeros((2, 3)))
    monkeypatch.chdir(tmp_path / "a")
    blocks = fastconv.dask.NpyBlocks("image.npy")
    monkeypatch.chdir(tmp_path / "b")  # as a worker started elsewhere would see it
    np.testing.assert_array_equal(blocks[:, :], np.ones((2, 3)))


def test_store_into_an_open_memmap_target(tmp_path):
    x, w, b = _problem(3, shape=(1, 2, 64, 48), kernel=(3, 2, 5, 5))
    source = np.lib.format.open_memmap(tmp_path / "in.npy", mode="w+", dtype=np.float32, shape=x.shape)
    source[...] = x
    source.flush()
    x_lazy = da.from_array(np.load(tmp_path / "in.npy", mmap_mode="r"), chunks=(1, 2, 16, 16))
    y = fastconv.dask.conv2d(x_lazy, w.astype(np.float32), b.astype(np.float32), padding="same")
    target = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=y.dtype, shape=y.shape)
    da.store(y, target)
    target.flush()
    expected = fastconv.conv2d(source, w.astype(np.float32), b.astype(np.float32), padding="same")
    assert relative_error(np.load(tmp_path / "out.npy"), expected) <= 1e-6


def test_to_zarr_writes_block_by_block(tmp_path):
    import zarr  # in the test extra (an optional store for users): fail, never skip, without it
    x, w, b = _problem(8, shape=(1, 2, 48, 40), kernel=(3, 2, 5, 5))
    y = fastconv.dask.conv2d(da.from_array(x, chunks=(1, 2, 16, 40)), w, b, padding="same")
    y.to_zarr(str(tmp_path / "out.zarr"))
    stored = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert stored.chunks == (1, 3, 16, 40)  # the input's strips, kept by "same" padding at stride 1
    assert relative_error(stored[...], fastconv.conv2d(x, w, b, padding="same")) <= 1e-10


def test_use_backend_reaches_worker_threads(monkeypatch):
    calls = []
    real = fastconv.dask.blocks.conv2d_in_memory

    def spy(*args, **kwargs):
        calls.append(fastconv.ops.conv2d.preferred_backend())
        return real(*args, **kwargs)

    monkeypatch.setattr(fastconv.dask.blocks, "conv2d_in_memory", spy)
    x, w, b = _problem(4, shape=(1, 1, 20, 20), kernel=(1, 1, 3, 3))
    with fastconv.use_backend("naive"):
        y = fastconv.dask.conv2d(da.from_array(x, chunks=10), w, b)
    y.compute(scheduler="threads")
    assert calls and set(calls) == {"naive"}


def test_import_fastconv_does_not_import_dask():
    code = "import sys, fastconv; print('dask' in sys.modules, 'distributed' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


class ChunksNotNumpy(np.lib.mixins.NDArrayOperatorsMixin):
    """Blocks of an array type other than numpy's, as cupy's or sparse's would be."""

    def __init__(self, array):
        self.array = np.asarray(array)

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)

    def __getitem__(self, index):
        return ChunksNotNumpy(self.array[index])

    def __array_function__(self, func, types, args, kwargs):
        return ChunksNotNumpy(func(*[a.array if isinstance(a, ChunksNotNumpy) else a for a in args], **kwargs))


def not_numpy_chunks(x):
    return x.map_blocks(ChunksNotNumpy, meta=ChunksNotNumpy(np.empty((0,) * x.ndim)))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda x: fastconv.dask.conv2d(not_numpy_chunks(x), np.ones((2, 2, 3, 3))), TypeError,
     r"x has chunks of type .*ChunksNotNumpy; fastconv.dask takes dask arrays of numpy chunks"),
    (lambda x: fastconv.dask.convolve2d(not_numpy_chunks(x[0, 0]), np.ones((3, 3))), TypeError,
     r"in1 has chunks of type .*ChunksNotNumpy"),
    (lambda x: fastconv.dask.conv2d(x[0, 0, 0], np.ones((3,))), ValueError, r"x must have shape.*got shape \(10,\)"),
    (lambda x: fastconv.dask.conv2d(x[0, 0], np.ones((1, 1, 3, 3))), ValueError, r"2-D image x, weight must be a 2-D"),
    (lambda x: fastconv.dask.conv2d(x[0, 0], np.ones((3, 3)), np.ones(2)), ValueError, r"bias must be a scalar"),
    (lambda x: fastconv.dask.conv2d(x, np.ones((3, 3))), ValueError, r"weight must have shape"),
    (lambda x: fastconv.dask.conv2d(x, np.ones((2, 2, 3, 3)), np.ones(3)), ValueError, r"bias must have shape \(2,\)"),
    (lambda x: fastconv.dask.conv2d(x, np.ones((2, 2, 3, 3)), stride=0), ValueError, r"stride must be positive"),
    (lambda x: fastconv.dask.conv2d(x, np.ones((2, 2, 11, 3))), ValueError, r"kernel of extent \(11, 3\)"),
    (lambda x: fastconv.dask.conv2d(x, np.ones((2, 2, 3, 3)), padding=10, padding_mode="reflect"), ValueError,
     r"reflect"),
    (lambda x: fastconv.dask.conv2d(x, np.ones((2, 2, 3, 3)), backend="nope"), ValueError, r"nope"),
    (lambda x: fastconv.dask.conv2d(x.astype(object), np.ones((2, 2, 3, 3))), TypeError, r"x has dtype object"),
    (lambda x: fastconv.dask.conv2d(x[x[:, 0, 0, 0] > 0], np.ones((2, 2, 3, 3))), ValueError, r"unknown chunk sizes"),
    (lambda x: fastconv.dask.convolve2d(x[0], np.ones((3, 3))), ValueError, r"inputs must both be 2-D"),
    (lambda x: fastconv.dask.correlate2d(x[0, 0], np.ones((3, 3)), mode="middle"), ValueError, r"mode must be.*'middle'"),
    (lambda x: fastconv.dask.correlate2d(x[0, 0], np.ones((3, 3)), boundary="zero"), ValueError,
     r"boundary must be.*'zero'"),
    (lambda x: fastconv.dask.convolve2d(x[0, 0], np.ones((3, 3)), fillvalue=[1, 2]), ValueError, r"fillvalue"),
    (lambda x: fastconv.dask.convolve2d(x[0, 0], np.ones((3, 3)), fillvalue=1j), ValueError, r"fillvalue.*complex"),
    (lambda x: fastconv.dask.convolve2d(x[0, 0], np.ones((11, 3)), mode="valid"), ValueError,
     r"'valid' mode.*at least as large"),
])
def test_errors_at_call_time(call, error, pattern):
    x = da.zeros((2, 2, 10, 10), chunks=5)
    with pytest.raises(error, match=pattern):
        call(x)


@pytest.mark.parametrize("image_dtype, kernel_dtype, fillvalue", [
    (np.int8, np.int64, 300),  # the fill fits the result dtype, not the image's
    (np.uint8, np.int64, -1),
    (np.uint8, np.float64, -1.5),
    (np.int16, np.float32, 0.5),
    (np.float32, np.float64, 1e40),  # inf in float32, not in the float64 result
    (np.int64, np.int64, 2.7),  # cast to the integer result: 2
])
def test_fillvalue_is_cast_to_the_result_dtype_as_scipy(image_dtype, kernel_dtype, fillvalue):
    rng = np.random.default_rng(9)
    image = (rng.standard_normal((7, 8)) * 5).astype(image_dtype)
    kernel = (rng.standard_normal((3, 4)) * 3).astype(kernel_dtype)
    for ours, theirs in ((fastconv.dask.convolve2d, signal.convolve2d),
                         (fastconv.dask.correlate2d, signal.correlate2d)):
        y = ours(da.from_array(image, chunks=3), kernel, mode="same", fillvalue=fillvalue)
        expected = theirs(image, kernel, mode="same", fillvalue=fillvalue)
        assert y.dtype == expected.dtype
        assert relative_error(computed_blocks(y), expected) <= 1e-6


def test_integer_signal_results_are_exact_as_scipy():
    # float64 arithmetic loses integers past 2**53 (and overflows past 2**63 instead of wrapping)
    image = np.full((6, 7), 2**60 + 1, dtype=np.int64)
    image[2, 3] = -(2**62) - 3
    kernel = np.array([[1, 3], [-2, 5]], dtype=np.int64)
    for ours, theirs in ((fastconv.dask.convolve2d, signal.convolve2d),
                         (fastconv.dask.correlate2d, signal.correlate2d)):
        for mode in ("full", "same", "valid"):
            y = ours(da.from_array(image, chunks=3), kernel, mode=mode, boundary="fill", fillvalue=7)
            expected = theirs(image, kernel, mode=mode, fillvalue=7)
            assert y.dtype == expected.dtype
            np.testing.assert_array_equal(computed_blocks(y), expected)


@pytest.mark.parametrize("dtype", [np.float16, np.bool_])
@pytest.mark.parametrize("mode", ["same", "valid"])  # valid: the kernel is larger, the swapped path
def test_signal_functions_refuse_the_dtypes_scipy_and_in_memory_refuse(dtype, mode):
    image = (np.arange(12).reshape(3, 4) % 5).astype(dtype)
    kernel = (np.arange(30).reshape(5, 6) % 3).astype(dtype)
    for ours, in_memory, theirs in ((fastconv.dask.convolve2d, fastconv.convolve2d, signal.convolve2d),
                                    (fastconv.dask.correlate2d, fastconv.correlate2d, signal.correlate2d)):
        for call in (theirs, in_memory):
            with pytest.raises(ValueError, match="not available for this type"):
                call(image, kernel, mode=mode)
        with pytest.raises(ValueError, match=f"not available for this type: inputs of dtype {np.dtype(dtype)}"):
            ours(da.from_array(image, chunks=2), kernel, mode=mode)


def test_signal_functions_take_backend_and_object_inputs_as_in_memory():
    image, kernel = np.arange(20).reshape(4, 5), np.ones((2, 2), int)
    # integers never reach a backend: one that could not run a 2x2 kernel is no error, in memory or here
    np.testing.assert_array_equal(
        fastconv.dask.convolve2d(da.from_array(image, chunks=2), kernel, backend="winograd").compute(),
        fastconv.convolve2d(image, kernel, backend="winograd"))
    for in1 in (image, da.from_array(image, chunks=2)):
        with pytest.raises(ValueError, match="Unknown backend 'bogus'"):
            fastconv.dask.correlate2d(in1, kernel, backend="bogus")
    for in1 in (np.zeros((3, 3), dtype=object), [[1, None]]):  # dask itself would refuse object arrays first
        with pytest.raises(ValueError, match="not available for this type: inputs of dtype object"):
            fastconv.convolve2d(in1, np.ones((1, 1)))
        with pytest.raises(ValueError, match="not available for this type: inputs of dtype object"):
            fastconv.dask.convolve2d(in1, np.ones((1, 1)))


@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_long_double_signal_results_as_scipy(dtype, mode):
    rng = np.random.default_rng(4)
    image = rng.standard_normal((7, 9)).astype(dtype)
    kernel = rng.standard_normal((3, 4)).astype(dtype)
    if dtype == np.clongdouble:
        image, kernel = image + 1j * image[::-1], kernel - 2j * kernel[:, ::-1]
    for ours, theirs in ((fastconv.dask.convolve2d, signal.convolve2d),
                         (fastconv.dask.correlate2d, signal.correlate2d)):
        for boundary, operands in (("fill", (image, kernel)), ("symm", (image, kernel)),
                                   ("fill", (kernel, image))):  # the last: "valid" swaps them
            first, second = operands
            y = ours(da.from_array(first, chunks=(3, 4)), second, mode=mode, boundary=boundary, fillvalue=2)
            expected = theirs(first, second, mode=mode, boundary=boundary, fillvalue=2)
            assert y.dtype == expected.dtype == dtype
            # in long double, not via float64 (whose rounding alone is 1e-16 where long double has
            # 64-bit mantissas)
            error = np.max(np.abs(computed_blocks(y) - expected)) / np.max(np.abs(expected))
            assert error <= 64 * np.finfo(dtype).eps


def test_joined_view_refuses_pieces_of_inconsistent_shapes():
    # every element of the view must belong to a piece: pieces whose batch, channel, row or column
    # extents disagree with the grid would let it read memory no piece owns
    whole = np.arange(2 * 3 * 8 * 6.0).reshape(2, 3, 8, 6)
    assert fastconv.dask.blocks._joined_view([[whole[:, :, :3]], [whole[:1, :, 3:]]]) is None
    assert fastconv.dask.blocks._joined_view([[whole[:, :2, :3]], [whole[:, :2, 3:]], [whole[:, :1, 3:]]]) is None
    assert fastconv.dask.blocks._joined_view([[whole[:, :, :3, :4], whole[:, :, 1:3, 4:]]]) is None
    assert fastconv.dask.blocks._joined_view([[whole[:, :, :3, :4]], [whole[:, :, 3:, :6]]]) is None


def test_graph_construction_reads_each_axis_plan_once(monkeypatch):
    # finding a block's pieces scanned every chunk of the axis for every block: quadratic in the
    # number of chunks per axis (seconds for 200x200 chunks)
    calls = []
    real = fastconv.dask.blocks._pieces
    monkeypatch.setattr(fastconv.dask.blocks, "_pieces", lambda *args: calls.append(args) or real(*args))
    x = da.zeros((2, 1, 120, 90), chunks=(1, 1, 4, 3))
    y = fastconv.dask.conv2d(x, np.ones((1, 1, 3, 3)), padding=1)
    assert len(calls) <= 30 + 30
    small = np.random.default_rng(3).standard_normal((2, 1, 24, 18))
    z = fastconv.dask.conv2d(da.from_array(small, chunks=(1, 1, 4, 3)), np.ones((1, 1, 3, 3)), padding=1,
                             backend="naive")
    np.testing.assert_array_equal(z.compute(), fastconv.conv2d(small, np.ones((1, 1, 3, 3)), padding=1,
                                                               backend="naive"))
    assert y.numblocks == (2, 1, 30, 30)


@settings(max_examples=60)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
    layout=st.sampled_from(["C", "F", "transposed", "reversed", "every other", "broadcast rows", "broadcast all"]),
    copied=st.sets(st.integers(0, 20), max_size=2),
    data=st.data(),
)
def test_joined_view_is_the_pieces_for_every_memory_layout(shape, layout, copied, data):
    base = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    x = {"C": base, "F": np.asfortranarray(base),
         "transposed": np.ascontiguousarray(base.swapaxes(2, 3)).swapaxes(2, 3),
         "reversed": base[:, ::-1, ::-1, ::-1],
         "every other": np.repeat(np.repeat(base, 2, axis=2), 2, axis=3)[:, :, ::2, ::2],
         "broadcast rows": np.broadcast_to(base[:, :, :1], shape),
         "broadcast all": np.broadcast_to(base[:1, :1, :1, :1], shape)}[layout]
    rows, cols = data.draw(chunkings(shape[2:]))
    row_edges, col_edges = np.cumsum((0,) + rows), np.cumsum((0,) + cols)
    grid = [[x[:, :, r0:r1, c0:c1] for c0, c1 in zip(col_edges, col_edges[1:])]
            for r0, r1 in zip(row_edges, row_edges[1:])]
    for index in copied:  # a piece from elsewhere in memory (as from another worker) breaks the view
        if index < len(rows) * len(cols):
            grid[index // len(cols)][index % len(cols)] = grid[index // len(cols)][index % len(cols)].copy()
    joined = fastconv.dask.blocks._joined_view(grid)
    if joined is not None:
        np.testing.assert_array_equal(joined, x)
        assert not joined.flags.writeable


def test_weights_are_read_when_the_graph_is_built():
    # dask keys name the weights by their content at call time: a graph that kept the caller's
    # array would compute with whatever it holds later, under the old key
    x, w, b = _problem(10, shape=(1, 2, 12, 12), kernel=(2, 2, 3, 3))
    expected = fastconv.conv2d(x, w, b, padding=1)
    y = fastconv.dask.conv2d(da.from_array(x, chunks=6), w, b, padding=1)
    image, kernel = x[0, 0], w[0, 0].copy()
    expected_z = signal.convolve2d(image, kernel)
    z = fastconv.dask.convolve2d(da.from_array(image, chunks=6), kernel)
    big = np.arange(16.0 * 15).reshape(16, 15)  # larger than the image: the 'valid' swap
    expected_swapped = signal.convolve2d(image, big, mode="valid")
    swapped = fastconv.dask.convolve2d(da.from_array(image, chunks=6), big, mode="valid")
    w[...], b[...], kernel[...], big[...] = 0, 0, 0, 0
    assert relative_error(y.compute(), expected) <= 1e-12
    assert relative_error(z.compute(), expected_z) <= 1e-12
    assert relative_error(swapped.compute(), expected_swapped) <= 1e-12


# --------------------------------------------------------------------------------------------
# blocks of the wrong shape: an error, never uninitialised memory


def short_block(chunk_location, rows_missing=1):
    """A map_blocks function that returns the block at ``chunk_location`` with rows missing (a fault)."""
    def function(block, block_info=None):
        if tuple(block_info[0]["chunk-location"][-2:]) == chunk_location:
            return block[..., :block.shape[-2] - rows_missing, :] if rows_missing > 0 else np.concatenate(
                [block, block[..., :1, :]], axis=-2)
        return block
    return function


@pytest.mark.parametrize("location, rows_missing", [((1, 1), 1), ((0, 2), 3), ((2, 0), -1)])
@pytest.mark.parametrize("kwargs", [{}, {"padding": 1}, {"padding": 2, "stride": 2},
                                    {"padding": 1, "padding_mode": "circular"}])
def test_source_blocks_of_another_shape_than_declared_are_an_error(location, rows_missing, kwargs):
    # A source whose tasks return fewer (or more) rows than its chunks declare left part of the
    # joined block unwritten (np.empty): -5e288 in the result, with no error.
    image = np.ones((12, 12))
    faulty = da.from_array(image, chunks=4).map_blocks(short_block(location, rows_missing), dtype=image.dtype)
    for call, expected in ((lambda x: fastconv.dask.conv2d(x, np.ones((3, 3)), **kwargs),
                            fastconv.conv2d(image[None], np.ones((1, 1, 3, 3)), **kwargs)[0]),
                           (lambda x: fastconv.dask.convolve2d(x, np.ones((3, 3)), mode="same"),
                            fastconv.convolve2d(image, np.ones((3, 3)), mode="same"))):
        try:
            out = call(faulty).compute(scheduler="sync")
        except ValueError as error:  # ours, naming the block, or dask's own (its rechunk copies blocks)
            assert "declared" in str(error) or "broadcast" in str(error), error
        else:  # a rechunk that cut the surplus row off, as dask does: the declared array's result
            assert rows_missing < 0
            np.testing.assert_array_equal(out, expected)


def test_a_block_result_of_another_shape_than_declared_is_an_error(monkeypatch):
    # fault injection in the per-block computation: a backend returning one row short
    calls = []

    def short_result(*args, **kwargs):
        out = fastconv.conv2d(*args, **kwargs)
        calls.append(out.shape)
        return out[:, :, :-1] if len(calls) == 2 else out

    monkeypatch.setattr(fastconv.dask.blocks, "conv2d_in_memory", short_result)
    y = fastconv.dask.conv2d(da.ones((12, 12), chunks=4), np.ones((3, 3)), padding=1)
    for reduce in (lambda y: y.compute(scheduler="sync"), lambda y: y.sum().compute(scheduler="sync")):
        calls.clear()
        with pytest.raises(ValueError, match=r"a block's convolution returned shape \(1, 1, 3, 4\) where the graph "
                                             r"declared \(1, 1, 4, 4\)"):
            reduce(y)


def test_joins_never_leave_memory_unwritten(monkeypatch):
    # whatever the pieces, every joined block is either fully written or refused
    real_empty = np.empty

    def poisoned_empty(shape, dtype=float, **kwargs):
        block = real_empty(shape, dtype=dtype, **kwargs)
        if np.dtype(dtype).kind == "f":
            block.fill(np.nan)
        return block

    monkeypatch.setattr(fastconv.dask.np, "empty", poisoned_empty)
    rng = np.random.default_rng(0)
    image, weight = rng.standard_normal((3, 13, 11)), rng.standard_normal((2, 3, 3, 3))
    x = da.from_array(image, chunks=(2, 3, 4)).map_blocks(lambda b: b + 0, dtype=image.dtype)  # not views: joined
    for kwargs in ({"padding": 1, "stride": (2, 1)}, {"padding": 2, "padding_mode": "replicate"}, {"dilation": 2}):
        y = fastconv.dask.conv2d(x, weight, backend="naive", **kwargs).compute()
        np.testing.assert_array_equal(y, fastconv.conv2d(image, weight, backend="naive", **kwargs))


# --------------------------------------------------------------------------------------------
# NpyBlocks on files that are not valid .npy files


def _broken_npy_files(folder):
    np.save(folder / "good.npy", np.arange(12.0).reshape(3, 4))
    data = (folder / "good.npy").read_bytes()
    (folder / "truncated.npy").write_bytes(data[:-8])
    (folder / "text.npy").write_text("1 2 3\n4 5 6\n")
    np.savez(folder / "archive.npz", a=np.ones(3))
    (folder / "archive.npy").write_bytes((folder / "archive.npz").read_bytes())
    (folder / "empty.npy").write_bytes(b"")
    np.save(folder / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    (folder / "header.npy").write_bytes(data[:20])
    (folder / "directory.npy").mkdir()
    return {"truncated.npy": "truncated", "text.npy": "does not start with the .npy format's magic bytes",
            "archive.npy": "zip archive", "archive.npz": "zip archive", "empty.npy": "empty",
            "objects.npy": "Python objects", "header.npy": "header cannot be read"}


def test_npy_blocks_refuse_files_that_are_not_valid_npy_naming_the_file_and_why(tmp_path):
    for name, why in _broken_npy_files(tmp_path).items():
        with pytest.raises(ValueError) as error:
            fastconv.dask.NpyBlocks(tmp_path / name)
        message = str(error.value)
        assert str(tmp_path / name) in message and "is not a valid .npy file" in message and why in message, message
    with pytest.raises(IsADirectoryError, match="directory.npy.*is a directory"):
        fastconv.dask.NpyBlocks(tmp_path / "directory.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        fastconv.dask.NpyBlocks(tmp_path / "missing.npy")
    good = fastconv.dask.NpyBlocks(tmp_path / "good.npy")  # the valid one still reads
    np.testing.assert_array_equal(da.from_array(good, chunks=2).compute(), np.arange(12.0).reshape(3, 4))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_blocks_read_every_npy_format_version(tmp_path, version):
    array = np.arange(20.0).reshape(4, 5).astype(">f4")
    with open(tmp_path / "v.npy", "wb") as file:
        np.lib.format.write_array(file, array, version=version)
    blocks = fastconv.dask.NpyBlocks(tmp_path / "v.npy")
    assert (blocks.shape, blocks.dtype) == ((4, 5), np.dtype(">f4"))
    np.testing.assert_array_equal(blocks[1:3], array[1:3])


# --------------------------------------------------------------------------------------------
# the class: chunks down to a pixel or a few KiB, any geometry, the in-memory result


WIDE_GEOMETRY = [  # (stride, padding, dilation) beyond what conv_problems draws, huge ones gathered
    ((1, 7), ((0, 9), (2, 1)), (1, 1)),
    ((10**6, 1), ((10**6, 10**6), (1, 1)), (1, 1)),
    ((1, 10**6), ((0, 0), (10**6, 3)), (1, 2)),
    ((1, 1), "same", (2**31, 1)),
    ((2, 1), ((2**40, 2**40), (1, 0)), (2**40, 1)),
    ((30, 30), ((40, 40), (40, 40)), (1, 1)),
]


@settings(max_examples=60)
@given(problem=conv_problems(max_size=24), data=st.data())
def test_conv2d_equals_in_memory_for_any_chunk_size_and_geometry(problem, data):
    kwargs = dict(problem.kwargs)
    if data.draw(st.booleans()):
        stride, padding, dilation = data.draw(st.sampled_from(WIDE_GEOMETRY))
        kwargs.update(stride=stride, padding=padding, dilation=dilation, padding_mode=data.draw(
            st.sampled_from(["zeros", "replicate"])))
        extent = [d * (k - 1) + 1 for d, k in zip(dilation, problem.weight.shape[2:])]
        assume(isinstance(padding, str) or all(n + sum(p) >= e for n, p, e in
                                               zip(problem.x.shape[2:], padding, extent)))
        geometry = {key: value for key, value in kwargs.items() if key != "padding_mode"}
        assume(np.prod(fastconv.output_shape(problem.x.shape, problem.weight.shape, **geometry)) <= 10**5)
    chunks = data.draw(st.one_of(
        st.sampled_from(["1KiB", "2KiB", "4KiB", "8KiB"]),  # dask's automatic chunks of that many bytes
        chunkings(problem.x.shape)))
    x = da.from_array(problem.x, chunks=chunks)
    expected = fastconv.conv2d(problem.x, problem.weight, problem.bias, backend="naive", **kwargs)
    y = fastconv.dask.conv2d(x, problem.weight, problem.bias, backend="naive", **kwargs)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    np.testing.assert_allclose(computed_blocks(y), expected, rtol=1e-12, atol=1e-12)
