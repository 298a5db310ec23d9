"""Property-based tests (hypothesis) of the message conversions and the synchronisers."""
import threading

import numpy as np
from builtin_interfaces.msg import Time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from romav2_ros.image_conversion import (ENCODINGS, InputError, imgmsg_to_numpy,
                                         numpy_to_imgmsg, to_rgb)
from romav2_ros.sync import ApproximateTimeSynchronizer, ExactTimeSynchronizer, SimpleFilter

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FLOAT_SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, 1e-40, -np.float32(3.4e38)]


# ------------------------------------------------------------------ conversions
@st.composite
def arrays(draw):
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    dtype, c = ENCODINGS[encoding]
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    if c == 2 and dtype == np.uint8:
        w += w % 2      # packed YUV 4:2:2 pairs pixels (odd widths are refused)
    shape = (h, w) if c == 1 else (h, w, c)
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.kind == 'f':
        arr = rng.normal(size=shape).astype(dtype)
        special = rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 1.0]))
        arr[special] = rng.choice(np.array(FLOAT_SPECIALS, dtype), size=int(special.sum()))
        # a NaN with a payload other than the default one must survive bit for bit too
        if arr.size > 1:
            arr.reshape(-1)[-1] = np.array([0x7FC00123], np.uint32).view(np.float32)[0]
    else:
        arr = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    return encoding, arr


def bits(arr: np.ndarray) -> np.ndarray:
    return arr.view(np.dtype(f'u{arr.dtype.itemsize}'))


@SETTINGS
@given(case=arrays(), pad=st.integers(0, 9), big_endian=st.booleans())
def test_round_trip_is_bit_exact_with_padding_byte_order_and_nan(case, pad, big_endian):
    """Integer types exact; float types exact to the bit, NaN payloads and -0.0 included."""
    encoding, arr = case
    dtype, _ = ENCODINGS[encoding]
    h = arr.shape[0]
    order = '>' if big_endian else '<'
    rows = np.ascontiguousarray(arr, dtype.newbyteorder(order)).reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=arr.shape[1], encoding=encoding, is_bigendian=int(big_endian),
                step=padded.shape[1], data=padded.tobytes())
    decoded = imgmsg_to_numpy(msg)
    assert decoded.dtype == dtype and decoded.shape == arr.shape
    np.testing.assert_array_equal(bits(decoded), bits(arr))
    again = imgmsg_to_numpy(numpy_to_imgmsg(decoded, encoding))
    np.testing.assert_array_equal(bits(again), bits(arr))
    rgb = to_rgb(msg)        # the model input: uint8 for 8-bit sources, else float in [0, 1]
    assert rgb.shape == arr.shape[:2] + (3,)
    assert rgb.dtype == (np.uint8 if dtype == np.uint8 else np.float32)
    assert np.isfinite(rgb).all() and rgb.min() >= 0.0
    assert rgb.max() <= (255 if rgb.dtype == np.uint8 else 1.0)


@SETTINGS
@given(encoding=st.sampled_from(sorted(ENCODINGS) + ['nv21', 'bayer_rggb12', '', '64FC1']),
       h=st.integers(0, 6), w=st.integers(0, 6), step=st.integers(0, 120),
       length=st.integers(0, 400), big_endian=st.booleans())
def test_any_header_is_decoded_or_refused_with_a_code(encoding, h, w, step, length,
                                                      big_endian):
    """Arbitrary (often inconsistent) headers: a correct array or an InputError, nothing else."""
    msg = Image(height=h, width=w, encoding=encoding, step=step, is_bigendian=int(big_endian),
                data=bytes(range(256)) * (length // 256) + bytes(range(length % 256)))
    try:
        arr = imgmsg_to_numpy(msg)
    except InputError as exc:
        assert exc.code in ('unsupported_encoding', 'zero_size', 'step_mismatch', 'too_large')
        return
    dtype, c = ENCODINGS[encoding]
    assert arr.shape == ((h, w) if c == 1 else (h, w, c)) and arr.dtype == dtype
    assert step >= w * c * dtype.itemsize and length == step * h
    rgb = to_rgb(msg)
    assert rgb.shape == (h, w, 3) and np.isfinite(rgb).all() and 0 <= rgb.min()
    assert rgb.max() <= (255 if rgb.dtype == np.uint8 else 1)


# ------------------------------------------------------------------ synchronisers


def make_msg(stamp_ns: int, ident: int):
    m = Image()
    m.header.stamp = Time(sec=stamp_ns // 10 ** 9, nanosec=stamp_ns % 10 ** 9)
    m.header.frame_id = str(ident)
    return m


def stamp_of(m) -> int:
    return m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec


def run_with_timeout(fn, timeout=20.0):
    """``fn()`` on a thread; fails when it does not return (a deadlock)."""
    error = []

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            error.append(exc)
    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), 'deadlock: feeding the synchroniser did not return'
    if error:
        raise error[0]


@st.composite
def arrivals(draw, approximate: bool):
    n_inputs = draw(st.integers(2, 4))
    n_stamps = draw(st.integers(1, 25))
    period = 100_000_000
    jitter = draw(st.sampled_from([0, 1_000_000, 20_000_000, 60_000_000])) if approximate else 0
    items = []
    for k in range(n_stamps):
        for i in range(n_inputs):
            if draw(st.floats(0, 1)) < 0.15:          # a lost message
                continue
            stamp = 10 ** 9 + k * period + (draw(st.integers(-jitter, jitter)) if jitter else 0)
            items.append((i, stamp))
    # arrival order: time order with each message displaced by up to `lag` positions, or random
    lag = draw(st.integers(0, 12))
    keys = [pos + draw(st.integers(0, lag)) for pos in range(len(items))]
    order = [it for _, it in sorted(zip(keys, items), key=lambda x: x[0])]
    if draw(st.booleans()) and order:
        order = draw(st.permutations(order))
    return n_inputs, order


def feed_within_queue_bound(sources, sync, order, queue_size):
    """Feed ``order`` [(input, stamp)] in sequence (frame_id = arrival index), checking after
    every message that no queue outgrew ``queue_size``; under a timeout (a deadlock fails)."""
    def feed_all():
        for ident, (i, stamp) in enumerate(order):
            sources[i].signalMessage(make_msg(stamp, ident))
            assert all(len(q) <= queue_size for q in sync.queues)
    run_with_timeout(feed_all)


@SETTINGS
@given(case=arrivals(approximate=False), queue_size=st.integers(1, 10),
       reentrant=st.booleans())
def test_exact_sync_pairs_equal_stamps_bounded_queues_no_deadlock(case, queue_size, reentrant):
    n_inputs, order = case
    sources = [SimpleFilter() for _ in range(n_inputs)]
    sync = ExactTimeSynchronizer(sources, queue_size)
    out = []

    def callback(*msgs):
        out.append(msgs)
        if reentrant:  # a callback that feeds the synchroniser again must not deadlock
            sources[0].signalMessage(make_msg(stamp_of(msgs[0]) + 1, -1))
    sync.registerCallback(callback)

    feed_within_queue_bound(sources, sync, order, queue_size)
    used = set()
    for msgs in out:
        assert len(msgs) == n_inputs
        assert len({stamp_of(m) for m in msgs}) == 1
        ids = [m.header.frame_id for m in msgs]
        assert not used & set(ids)                 # no message used twice
        used |= set(ids)
    assert len({stamp_of(m[0]) for m in out}) == len(out)
    assert sync.lock.acquire(timeout=1.0)
    sync.lock.release()


@SETTINGS
@given(case=arrivals(approximate=True), queue_size=st.integers(1, 10),
       slop_ms=st.sampled_from([0, 5, 20, 50, 150]))
def test_approximate_sync_never_pairs_across_more_than_slop(case, queue_size, slop_ms):
    n_inputs, order = case
    sources = [SimpleFilter() for _ in range(n_inputs)]
    sync = ApproximateTimeSynchronizer(sources, queue_size, slop_ms / 1000)
    out = []
    sync.registerCallback(lambda *m: out.append(m))

    feed_within_queue_bound(sources, sync, order, queue_size)
    used = set()
    for msgs in out:
        stamps = [stamp_of(m) for m in msgs]
        assert max(stamps) - min(stamps) <= slop_ms * 1_000_000
        ids = {m.header.frame_id for m in msgs}
        assert len(ids) == n_inputs and not used & ids
        used |= ids


@settings(max_examples=15, deadline=None)
@given(n=st.integers(20, 200), queue_size=st.integers(1, 10))
def test_sync_fed_from_two_threads_does_not_deadlock(n, queue_size):
    sources = [SimpleFilter(), SimpleFilter()]
    sync = ApproximateTimeSynchronizer(sources, queue_size, 0.01)
    out = []
    sync.registerCallback(lambda *m: out.append(m))

    def feeder(i):
        def run():
            for k in range(n):
                sources[i].signalMessage(make_msg(10 ** 9 + k * 10 ** 7, k))
        return run
    threads = [threading.Thread(target=feeder(i), daemon=True) for i in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
        assert not th.is_alive(), 'deadlock'
    assert all(len(q) <= queue_size for q in sync.queues)
    for msgs in out:
        assert abs(stamp_of(msgs[0]) - stamp_of(msgs[1])) <= 10 ** 7


def test_approximate_sync_message_older_than_a_full_queue_is_dropped():
    """Regression (found by the property above): with queue_size 1, a message older than the
    one queued was trimmed at once but still used as a candidate -> KeyError."""
    a, b = SimpleFilter(), SimpleFilter()
    sync = ApproximateTimeSynchronizer([a, b], 1, 0.0)
    out = []
    sync.registerCallback(lambda *m: out.append(m))
    a.signalMessage(make_msg(1_700_000_000, 0))
    b.signalMessage(make_msg(1_600_000_000, 1))
    a.signalMessage(make_msg(1_600_000_000, 2))    # older than the queued 1.7 s: dropped, no KeyError
    assert not out and all(len(q) <= 1 for q in sync.queues)
    b.signalMessage(make_msg(1_700_000_000, 3))
    assert [stamp_of(m) for m in out[0]] == [1_700_000_000, 1_700_000_000]
