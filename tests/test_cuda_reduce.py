"""Warp-level reductions (netdsl/ops/cudakit.py, netdsl/ops/reduce_cuda.py) and their users:
the per-channel sums (bias gradients), batch norm's statistics, the loss and softmax.

Every kernel runs in Numba's simulator against the float64 NumPy reference, twice (the
results must be the same bits). The simulator has no warp shuffles, so the kernels there
use a shared-memory fallback; the GPU's shuffle path is checked three ways:

* `emulated_shuffles` gives the simulator a `shfl_xor_sync` (the 32 threads of a warp meet
  at a barrier and read their partner's value), so the GPU path's kernels run here, in
  blocks of two warps, and must give the fallback's bits;
* the butterfly schedule itself, in plain Python, against the fallback's tree;
* the flat path's index walk (the plain functions the kernels use), on the CPU, against
  NumPy's indices for the GPU's block size.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
from numba import cuda
from opcheck import assert_close

from netdsl.ops import activation, batchnorm, cudakit, loss, reduce_cuda, softmax
from netdsl.ops.cudakit import simulator

cudakit.fast_simulator_barrier()

pytestmark = pytest.mark.skipif(not simulator(), reason="runs kernels in the CUDA simulator")

TOL = 1e-5


def dev(a: np.ndarray):
    return cuda.to_device(np.ascontiguousarray(a))


def nan_out(shape):
    return cuda.to_device(np.full(shape, np.nan, np.float32))


def host(d) -> np.ndarray:
    return d.copy_to_host()


def f32(shape, seed, scale=1.0, shift=0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


@pytest.fixture
def emulated_shuffles(monkeypatch):
    """cuda.shfl_xor_sync in the simulator: a warp's 32 threads store their values, meet at a
    barrier, read their partner's (lane ^ lane_mask) and meet again before the slots are
    reused. Blocks must be whole warps that all take part (as on a GPU with a full mask)."""
    from numba.cuda.simulator import kernelapi

    lock = threading.Lock()

    def shfl_xor_sync(self, mask, value, lane_mask):
        assert mask == cudakit.FULL_MASK
        me = threading.current_thread()
        warp, lane = divmod(me.thread_id, cudakit.WARP)
        with lock:  # one barrier and 32 slots per warp of this block
            warps = me._manager.__dict__.setdefault("_netdsl_warps", {})
            barrier, slots = warps.setdefault(warp, (threading.Barrier(32, timeout=60), [0] * 32))
        slots[lane] = value
        barrier.wait()
        got = slots[lane ^ lane_mask]
        barrier.wait()
        return got

    monkeypatch.setattr(kernelapi.FakeCUDAModule, "shfl_xor_sync", shfl_xor_sync, raising=False)


# ----------------------------------------------------------------------- the shuffle schedule


def butterfly(values: np.ndarray, op) -> np.ndarray:
    """What the GPU's warp_sum / warp_max leave in each of 32 lanes: five xor shuffles, each
    lane combining its own value with its partner's (v = op(v, shfl_xor(v, m)))."""
    v = values.copy()
    for m in (16, 8, 4, 2, 1):
        v = np.array([op(v[lane], v[lane ^ m]) for lane in range(32)])
    return v


def tree(values: np.ndarray, op) -> float:
    """The simulator's fallback: lane l takes lane l + s's value, s = 16 .. 1; lane 0 wins."""
    v = list(values)
    s = 16
    while s:
        for lane in range(s):
            v[lane] = op(v[lane], v[lane + s])
        s //= 2
    return v[0]


@pytest.mark.parametrize("seed", range(5))
def test_butterfly_gives_every_lane_the_fallbacks_bits(seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(32) * 10.0 ** rng.integers(-8, 8, 32)  # rounding matters
    for op in (lambda a, b: a + b, max):
        lanes = butterfly(values, op)
        assert len(set(lanes.tolist())) == 1  # the same bits in every lane
        assert lanes[0] == tree(values, op)
    assert (
        abs(butterfly(values, lambda a, b: a + b)[0] - values.sum()) <= 1e-12 * np.abs(values).sum()
    )


@pytest.mark.parametrize("shuffles", [True, False])
def test_block_and_warp_reducers_in_a_kernel(emulated_shuffles, monkeypatch, shuffles):
    """block_reducer (the old API prelu, subsample and conv use) and warp_max over a block of
    two warps, on either path: every thread gets the same bits, the fallback's bits."""
    from numba import float64

    rng = np.random.default_rng(1)
    v = rng.standard_normal(64) * 10.0 ** rng.integers(-6, 6, 64)
    monkeypatch.setattr(cudakit, "use_shuffles", lambda: shuffles)
    block_sum = cudakit.block_reducer(64)
    _, warp_max = cudakit.warp_reducer(shuffles)

    @cuda.jit
    def kernel(v, sums, maxes):
        t = cuda.threadIdx.x
        buf = cuda.shared.array(64, float64)
        buf[t] = v[t]
        sums[t] = block_sum(buf, t)
        maxes[t] = warp_max(v[t], buf, t)

    sums, maxes = np.zeros(64), np.zeros(64)
    kernel[1, 64](v, sums, maxes)
    assert len(set(sums.tolist())) == 1
    want = tree([tree(v[:32], lambda a, b: a + b), tree(v[32:], lambda a, b: a + b)] + [0.0] * 30,
                lambda a, b: a + b)  # fmt: skip
    assert sums[0] == want and abs(want - v.sum()) <= 1e-12 * np.abs(v).sum()
    assert (maxes[:32] == v[:32].max()).all() and (maxes[32:] == v[32:].max()).all()


# --------------------------------------------------------------------- partition and index walk


def walked_addresses(pt: reduce_cuda.Partition, c: int) -> list[int]:
    """Every address the flat kernels' threads load for channel c, block by block."""
    plane, count, chunk, cp, jump, step_p, wrap = pt.args
    out = []
    for s in range(pt.splits):
        for t in range(pt.threads):
            q = s * chunk + t  # the value the thread is at: checked against its address
            addr, p = reduce_cuda.walk_begin(q, plane, cp, c)
            stop, _ = reduce_cuda.walk_begin(min(s * chunk + chunk, count), plane, cp, c)
            while addr < stop:
                assert q < min(s * chunk + chunk, count)
                assert 0 <= p < plane and addr == (q // plane) * cp + c * plane + q % plane
                out.append(addr)
                q += pt.threads
                addr, p = reduce_cuda.walk_next(addr, p, plane, jump, step_p, wrap)
    return out


@pytest.mark.parametrize("n, c, plane, splits", [
    (2, 3, 32, None), (3, 2, 49, None), (2, 2, 255, 3), (1, 2, 256, None), (2, 1, 257, 5),
    (4, 3, 3136, None), (5, 2, 100, 64), (1, 1, 40, 1000),
])  # fmt: skip
def test_flat_walk_visits_each_value_of_its_channel_once(n, c, plane, splits):
    pt = reduce_cuda.Partition(n, c, plane, 256, splits)  # the GPU's block size
    assert not pt.columns and pt.grid == (c, pt.splits) and pt.per == 1 and pt.width == c
    for ch in range(c):
        want = (np.arange(n)[:, None] * c * plane + ch * plane + np.arange(plane)).ravel()
        got = walked_addresses(pt, ch)
        assert sorted(got) == want.tolist()


def test_partition_fills_the_gpu_and_bounds_its_work():
    big = reduce_cuda.Partition(256, 64, 56 * 56, 256)  # ResNet-18's first stage, batch 256
    assert big.splits * 64 >= 1000 and big.grid == (64, big.splits)
    fc = reduce_cuda.Partition(128, 4096, 1, 256)  # an fc bias, (N, O)
    assert fc.columns and fc.grid[0] * 256 >= 4096 and fc.per == 1 and fc.width == 4096
    assert fc.splits * 8 >= 128 > (fc.splits - 1) * 8  # 8 rows per split
    small = reduce_cuda.Partition(2, 3, 40, 256)  # too little work to split
    assert small.splits == 1
    with pytest.raises(ValueError, match="nothing to reduce"):
        reduce_cuda.Partition(0, 3, 4, 256)


# ------------------------------------------------------------------------------ channel sums

SUM_CASES = [  # (n, c, plane, splits): odd sizes, one element, more blocks than images,
    (1, 1, 1, None),  # plane 1 (fc) and a large plane
    (3, 5, 7, None),
    (5, 7, 1, 3),
    (4, 33, 1, 4),
    (2, 3, 40, None),
    (4, 2, 33, 3),
    (2, 3, 100, 7),
    (2, 2, 1500, 3),
]


@pytest.mark.parametrize("n, c, plane, splits", SUM_CASES)
def test_channel_sums(n, c, plane, splits):
    x = f32((n, c, plane), seed=n * 100 + c + plane, scale=3.0)
    op = reduce_cuda.ChannelSumsCUDA(n, c, plane, splits)
    out = nan_out(c)
    xd = dev(x)
    op(xd, out)
    ref = x.astype(np.float64).sum(axis=(0, 2))
    np.testing.assert_allclose(host(out), ref, rtol=1e-7, atol=1e-12 * np.abs(x).sum())
    first = host(out)
    op(xd, out)
    assert host(out).tobytes() == first.tobytes()  # bitwise repeatable
    again = nan_out(c)
    reduce_cuda.ChannelSumsCUDA(n, c, plane, splits)(xd, again)  # a second launcher too
    assert host(again).tobytes() == first.tobytes()


def test_channel_sums_take_4d_and_2d_views():
    dy = f32((3, 4, 5, 7), seed=1)
    out = nan_out(4)
    reduce_cuda.ChannelSumsCUDA(3, 4, 35)(dev(dy), out)  # a conv bias gradient
    assert_close(host(out), dy.astype(np.float64).sum(axis=(0, 2, 3)), TOL, "conv")
    dy2 = f32((6, 10), seed=2)
    out2 = nan_out(10)
    reduce_cuda.ChannelSumsCUDA(6, 10, 1)(dev(dy2), out2)  # an fc bias gradient
    assert_close(host(out2), dy2.astype(np.float64).sum(axis=0), TOL, "fc")


@pytest.mark.parametrize("n, c, plane, splits", [(3, 5, 7, 2), (4, 2, 33, 3), (2, 3, 100, 2)])
def test_channel_sums_shuffle_path_gives_the_fallbacks_bits(emulated_shuffles, n, c, plane,
                                                            splits):  # fmt: skip
    x = dev(f32((n, c, plane), seed=7, scale=1e3))
    outs = []
    for shuffles in (True, False):
        out = nan_out(c)
        reduce_cuda.ChannelSumsCUDA(n, c, plane, splits, shuffles=shuffles, threads=64)(x, out)
        outs.append(host(out))
    assert outs[0].tobytes() == outs[1].tobytes()
    ref = host(x).astype(np.float64).sum(axis=(0, 2))
    np.testing.assert_allclose(outs[0], ref, rtol=1e-7, atol=1e-9)


# -------------------------------------------------------------------------------- batch norm


def run_bn(shape, splits=None, shuffles=None, threads=None, act_kind="relu", shift=0.0):
    """Forward (train) and backward of BnCUDA on (n, c, h, w): the outputs as NumPy arrays."""
    n, c, h, w = shape
    x = f32(shape, seed=3, scale=2.0, shift=shift) + np.arange(c, dtype=np.float32)[:, None, None]
    gamma, beta, dy = f32(c, 4) + 1.5, f32(c, 5), f32(shape, 6)
    rm0, rv0 = f32(c, 8), np.abs(f32(c, 9)) + 0.5
    op = batchnorm.BnCUDA(n, c, h * w, 1e-5, 0.1, activation.ACT_CODE[act_kind], 0.0,
                          splits=splits, shuffles=shuffles, threads=threads)  # fmt: skip
    rm, rv, y = dev(rm0), dev(rv0), nan_out(x.size)
    xd = dev(x).reshape(-1)
    op.forward_train(xd, dev(gamma), dev(beta), y, rm, rv)
    dx, dg, db = nan_out(x.size), nan_out(c), nan_out(c)
    op.backward(dev(dy).reshape(-1), y, xd, dev(gamma), dx, dg, db)
    got = {k: host(v) for k, v in dict(y=y, rm=rm, rv=rv, dx=dx, dg=dg, db=db).items()}
    return got, (x, gamma, beta, dy, rm0, rv0)


BN_CASES = [  # (shape, splits): flat (plane >= 32) and column paths, more chunks than images
    ((3, 2, 5, 7), 4),
    ((2, 3, 6, 6), None),
    ((5, 3, 1, 1), 2),
    ((2, 2, 2, 3), 3),
    ((1, 1, 1, 1), None),
]


@pytest.mark.parametrize("shape, splits", BN_CASES)
def test_batchnorm_statistics_over_many_blocks(shape, splits):
    n, c, h, w = shape
    shift = 0.0 if n * h * w == 1 else 300.0  # |mean| >> std: the variance must not cancel
    got, (x, gamma, beta, dy, rm0, rv0) = run_bn(shape, splits, shift=shift)
    y_ref, mean, var = batchnorm.ref_forward_train(x, gamma, beta)
    y_ref = activation.ref_forward(y_ref, "relu")
    assert_close(got["y"].reshape(shape), y_ref, 1e-4, "forward")
    rm_ref, rv_ref = batchnorm.ref_update_running(rm0, rv0, mean, var, n * h * w, 0.1)
    assert_close(got["rm"], rm_ref, TOL, "running mean")
    assert_close(got["rv"], rv_ref, 1e-4, "running var")
    dz = activation.ref_backward(dy, got["y"].reshape(shape), "relu")
    rdx, rdg, rdb = batchnorm.ref_backward(dz, x, gamma)
    assert_close(got["dx"].reshape(shape), rdx, 1e-3, "dx")
    assert_close(got["dg"], rdg, 1e-4, "dgamma")
    assert_close(got["db"], rdb, TOL, "dbeta")
    again, _ = run_bn(shape, splits, shift=shift)
    assert all(again[k].tobytes() == got[k].tobytes() for k in got)  # bitwise repeatable


@pytest.mark.parametrize("shape, splits", [((3, 2, 5, 7), 2), ((5, 3, 1, 1), 2)])
def test_batchnorm_shuffle_path_gives_the_fallbacks_bits(emulated_shuffles, shape, splits):
    gpu, _ = run_bn(shape, splits, shuffles=True, threads=64)
    sim, _ = run_bn(shape, splits, shuffles=False, threads=64)
    assert all(gpu[k].tobytes() == sim[k].tobytes() for k in gpu)


# ----------------------------------------------------------------------- loss and softmax


def loss_case(kind, rows, classes, shuffles=None, threads=None):
    z = f32((rows, classes), seed=rows + classes, scale=2.0)
    labels = np.random.default_rng(rows).integers(0, classes, rows)
    if rows > 2:
        z[1, :] = 0.5  # a tie: class 0 ranks first
        labels[2] = 0
        z[2, 0] = np.nan  # a NaN score for the label: an error
    op = loss.LossCUDA(kind, rows, classes, shuffles=shuffles, threads=threads)
    dz = nan_out(z.size)
    op.forward_backward(dev(z), dev(labels.astype(np.int64)), dz)
    return z, labels, host(op.stats), host(dz).reshape(rows, classes), op


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
@pytest.mark.parametrize("rows, classes", [(1, 1), (3, 10), (5, 33), (2, 1000)])
def test_loss_a_warp_per_row(kind, rows, classes):
    z, labels, stats, dz, op = loss_case(kind, rows, classes)
    ok = np.isfinite(z).all(axis=1)
    ref = loss.ref_xent if kind == "cross_entropy" else loss.ref_mse
    value, ref_dz = ref(z[ok], labels[ok])
    if ok.all():
        assert abs(stats[0] - value) < TOL * max(1, abs(value))
        assert_close(dz, ref_dz * ok.sum() / rows, TOL, "gradient")
    else:  # the NaN row's loss is NaN; the other rows' gradients are exact
        assert np.isnan(stats[0])
        assert_close(dz[ok], ref_dz * ok.sum() / rows, TOL, "gradient")
    assert stats[1] == loss.topk_errors(z, labels, 1) and stats[2] == 0
    bad = labels.copy()
    bad[0] = classes  # out of range: counted, no gradient for the row
    op.forward_backward(dev(z), dev(bad.astype(np.int64)), dev(dz))
    assert host(op.stats)[2] == 1
    _, _, stats2, dz2, _ = loss_case(kind, rows, classes)
    assert stats2.tobytes() == stats.tobytes() and dz2.tobytes() == dz.tobytes()


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_loss_shuffle_path_gives_the_fallbacks_bits(emulated_shuffles, kind):
    # 3 rows in blocks of 2 warps: the second block has a warp past the last row
    gpu = loss_case(kind, 3, 40, shuffles=True, threads=64)
    sim = loss_case(kind, 3, 40, shuffles=False, threads=64)
    assert gpu[2].tobytes() == sim[2].tobytes() and gpu[3].tobytes() == sim[3].tobytes()
    assert gpu[2][1] == loss.topk_errors(gpu[0], gpu[1], 1)


def softmax_case(rows, classes, shuffles=None, threads=None):
    x, dy = f32((rows, classes), seed=classes, scale=3.0), f32((rows, classes), seed=11)
    op = softmax.SoftmaxCUDA(rows, classes, shuffles=shuffles, threads=threads)
    y, dx = nan_out(x.shape), nan_out(x.shape)
    op.forward(dev(x), y)
    op.backward(dev(dy), y, dx)
    return x, dy, host(y), host(dx)


@pytest.mark.parametrize("rows, classes", [(1, 1), (3, 10), (4, 33), (2, 1000)])
def test_softmax_a_warp_per_row(rows, classes):
    x, dy, y, dx = softmax_case(rows, classes)
    assert_close(y, softmax.ref_forward(x), TOL, "forward")
    assert_close(dx, softmax.ref_backward(dy, y), TOL, "backward")
    again = softmax_case(rows, classes)
    assert again[2].tobytes() == y.tobytes() and again[3].tobytes() == dx.tobytes()
    # in place: y may be x, dx may be dy
    op = softmax.SoftmaxCUDA(rows, classes)
    buf, g = dev(x), dev(dy)
    op.forward(buf, buf)
    op.backward(g, buf, g)
    assert host(buf).tobytes() == y.tobytes() and host(g).tobytes() == dx.tobytes()


def test_softmax_shuffle_path_gives_the_fallbacks_bits(emulated_shuffles):
    gpu = softmax_case(3, 40, shuffles=True, threads=64)
    sim = softmax_case(3, 40, shuffles=False, threads=64)
    assert gpu[2].tobytes() == sim[2].tobytes() and gpu[3].tobytes() == sim[3].tobytes()


# ---------------------------------------------------------------- the GPU path compiles


def _nvvm_available() -> bool:
    code = "from cuda.pathfinder import load_nvidia_dynamic_lib as l; l('nvvm'); l('nvrtc')"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
    )


def test_shuffle_kernels_compile_to_ptx(emulated_shuffles, tmp_path):
    """The shuffle path's kernels (recorded while they run here, emulated) compile to PTX
    for sm_90 with NVVM, in a process without the simulator (netdsl/backends/cuda_ptx.py)."""
    if not _nvvm_available():
        pytest.skip("NVVM / NVRTC libraries not installed (pip install '.[ptx]')")
    with cudakit.recording() as rec:
        test_channel_sums_shuffle_path_gives_the_fallbacks_bits(None, 3, 5, 7, 2)
        test_channel_sums_shuffle_path_gives_the_fallbacks_bits(None, 4, 2, 33, 3)
        run_bn((3, 2, 5, 7), 2, shuffles=True, threads=64)
        run_bn((5, 3, 1, 1), 2, shuffles=True, threads=64)
        for kind in ("cross_entropy", "mse"):
            loss_case(kind, 3, 40, shuffles=True, threads=64)
        softmax_case(3, 40, shuffles=True, threads=64)
    path = tmp_path / "launches.pkl"
    shuffled = [r for r in rec if any(v is True for v in r[2])]  # cfg: shuffles on
    path.write_bytes(pickle.dumps(shuffled))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-m", "netdsl.backends.cuda_ptx", str(path),
                          "--per-family", "0"], env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    names = {line.split()[1].partition("[")[0] for line in out.stdout.splitlines()[:-1]}
    assert names >= {"reduce_cuda.channel_sums_flat", "reduce_cuda.bn_moments_cols",
                     "reduce_cuda.bn_grad_flat", "loss.loss_xent_rows", "loss.loss_finish",
                     "softmax.softmax_backward"}, names  # fmt: skip
