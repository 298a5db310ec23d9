"""Image <-> numpy conversion: every encoding, padding, byte order, compression, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image

from romav2_ros.image_conversion import (ENCODINGS, InputError, compressed_to_numpy,
                                         imgmsg_to_numpy, numpy_to_compressed,
                                         numpy_to_imgmsg, to_rgb)


YUV = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')


def random_array(encoding, h, w, seed=0):
    dtype, c = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 1 else (h, w, c)
    if dtype.kind == 'f':
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(encoding=st.sampled_from(sorted(ENCODINGS)), h=st.integers(1, 9), w=st.integers(1, 9),
       pad=st.integers(0, 7), big_endian=st.booleans())
def test_round_trip_with_padding_and_byte_order(encoding, h, w, pad, big_endian):
    if encoding in YUV:
        w += w % 2          # packed 4:2:2 pairs pixels
    arr = random_array(encoding, h, w)
    dtype, c = ENCODINGS[encoding]
    order = '>' if big_endian else '<'
    rows = np.ascontiguousarray(arr, dtype.newbyteorder(order)).reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian),
                step=padded.shape[1], data=padded.tobytes())
    np.testing.assert_array_equal(imgmsg_to_numpy(msg), arr)
    back = numpy_to_imgmsg(arr, encoding)
    assert back.step == w * c * dtype.itemsize and back.is_bigendian == 0
    np.testing.assert_array_equal(imgmsg_to_numpy(back), arr)


def test_nan_survives_float_images():
    arr = np.full((3, 4), np.nan, np.float32)
    arr[0, 0] = 1.5
    out = imgmsg_to_numpy(numpy_to_imgmsg(arr, '32FC1'))
    assert np.isnan(out).sum() == 11 and out[0, 0] == 1.5
    assert np.isfinite(to_rgb(numpy_to_imgmsg(arr, '32FC1'))).all()


def as_unit_float(img):
    return img / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16'])
def test_model_input_is_rgb(encoding):
    """8-bit sources stay uint8 (converted on the device), 16-bit ones become [0, 1]."""
    rgb = random_array('rgb8', 5, 6)
    arr = {'rgb8': rgb, 'bgr8': rgb[..., ::-1], 'rgba8': np.dstack([rgb, rgb[..., :1]]),
           'bgra8': np.dstack([rgb[..., ::-1], rgb[..., :1]]), 'mono8': rgb[..., 0],
           'mono16': rgb[..., 0].astype(np.uint16) * 257}[encoding]
    out = to_rgb(numpy_to_imgmsg(np.ascontiguousarray(arr), encoding))
    want = rgb / 255.0 if encoding not in ('mono8', 'mono16') else \
        np.repeat(rgb[..., :1] / 255.0, 3, axis=2)
    assert out.dtype == (np.float32 if encoding == 'mono16' else np.uint8)
    assert out.shape == (5, 6, 3) and out.flags['C_CONTIGUOUS']
    np.testing.assert_allclose(as_unit_float(out), want, atol=1e-6)


#: Which colour each ROS Bayer pattern puts at (row % 2, column % 2): the names spell the
#: first two rows (rggb: R G / G B).
BAYER = {'rggb': ('R', 'G', 'G', 'B'), 'bggr': ('B', 'G', 'G', 'R'),
         'gbrg': ('G', 'B', 'R', 'G'), 'grbg': ('G', 'R', 'B', 'G')}


@pytest.mark.parametrize('pattern', sorted(BAYER))
@pytest.mark.parametrize('bits', [8, 16])
def test_bayer_is_demosaiced_with_the_right_pattern(pattern, bits):
    """A mosaic of a uniform colour, sampled by the pattern's definition, demosaics back to
    that colour (a wrong pattern swaps red and blue or mixes green in)."""
    colour = {'R': 200, 'G': 90, 'B': 30}
    h, w = 12, 16
    mosaic = np.empty((h, w), np.uint16 if bits == 16 else np.uint8)
    for k, name in enumerate(BAYER[pattern]):
        mosaic[k // 2::2, k % 2::2] = colour[name] * (257 if bits == 16 else 1)
    out = to_rgb(numpy_to_imgmsg(mosaic, f'bayer_{pattern}{bits}'))
    inner = as_unit_float(out)[2:-2, 2:-2] * 255
    np.testing.assert_allclose(inner, np.broadcast_to([200, 90, 30], inner.shape), atol=1.0)


def yuv601(rgb):
    """BT.601 studio-swing Y'CbCr of RGB (what OpenCV's YUV422 conversions invert)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return y, cb, cr


@pytest.mark.parametrize('encoding', ['yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'])
def test_yuv422_is_decoded_in_its_byte_order(encoding):
    """Packed 4:2:2 built from a known image by the formats' byte orders (UYVY: U Y0 V Y1;
    YUYV: Y0 U Y1 V) decodes back to it (chroma shared by pixel pairs of equal colour)."""
    rng = np.random.default_rng(3)
    pairs = rng.integers(20, 235, (6, 5, 3)).astype(np.uint8)
    rgb = np.repeat(pairs, 2, axis=1)                          # 6 x 10, pairs share colour
    y, cb, cr = (np.rint(c).astype(np.uint8) for c in yuv601(rgb))
    packed = np.empty((6, 10, 2), np.uint8)
    uyvy = encoding in ('yuv422', 'uyvy')
    packed[..., 1 if uyvy else 0] = y
    packed[:, 0::2, 0 if uyvy else 1] = cb[:, 0::2]
    packed[:, 1::2, 0 if uyvy else 1] = cr[:, 0::2]
    out = to_rgb(numpy_to_imgmsg(packed, encoding))
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
    np.testing.assert_allclose(out.astype(int), rgb.astype(int), atol=3)


def test_yuv422_odd_width_is_refused():
    msg = numpy_to_imgmsg(np.zeros((2, 3, 2), np.uint8), 'uyvy')
    with pytest.raises(InputError) as err:
        to_rgb(msg)
    assert err.value.code == 'step_mismatch'


def test_colour_conversion_like_cv_bridge():
    rgb = random_array('rgb8', 4, 5)
    msg = numpy_to_imgmsg(rgb, 'rgb8')
    np.testing.assert_array_equal(imgmsg_to_numpy(msg, 'bgr8'), rgb[..., ::-1])
    assert imgmsg_to_numpy(msg, 'mono8').shape == (4, 5)
    with pytest.raises(InputError) as err:
        imgmsg_to_numpy(msg, '32FC1')
    assert err.value.code == 'unsupported_encoding'


@pytest.mark.parametrize('encoding,fmt', [('rgb8', 'png'), ('bgr8', 'png'), ('mono8', 'png'),
                                          ('mono16', 'png'), ('rgba8', 'png'),
                                          ('rgb8', 'jpeg'), ('mono8', 'jpeg')])
def test_compressed_round_trip(encoding, fmt):
    ramp = np.broadcast_to(np.linspace(0, 255, 48).astype(np.uint8)[:, None], (48, 3))
    arr = random_array(encoding, 32, 48) if fmt == 'png' else np.ascontiguousarray(
        np.broadcast_to(ramp if encoding == 'rgb8' else ramp[:, 0], (32,) + ramp.shape[
            :2 if encoding == 'rgb8' else 1]))
    msg = numpy_to_compressed(arr, encoding, fmt)
    assert isinstance(msg, CompressedImage) and msg.format.startswith(f'{encoding}; {fmt}')
    decoded, enc = compressed_to_numpy(msg)
    back = as_unit_float(to_rgb(msg))
    want = as_unit_float(to_rgb(numpy_to_imgmsg(arr, encoding)))
    if fmt == 'png':
        np.testing.assert_allclose(back, want, atol=1e-6)
    else:
        assert np.abs(back - want).mean() < 0.02
    assert enc in ('bgr8', 'bgra8', 'mono8', 'mono16')


@pytest.mark.parametrize('kwargs,code', [
    (dict(encoding='nv21', height=2, width=2, step=2, data=bytes(6)), 'unsupported_encoding'),
    (dict(encoding='rgb8', height=0, width=0, step=0, data=b''), 'zero_size'),
    (dict(encoding='rgb8', height=2, width=2, step=5, data=bytes(10)), 'step_mismatch'),
    (dict(encoding='rgb8', height=2, width=2, step=6, data=bytes(11)), 'step_mismatch'),
])
def test_bad_images_raise_input_error_with_code(kwargs, code):
    with pytest.raises(InputError) as err:
        imgmsg_to_numpy(Image(**kwargs))
    assert err.value.code == code and isinstance(err.value, ValueError)
    assert str(err.value)


def test_bad_compressed_raises():
    with pytest.raises(InputError) as err:
        compressed_to_numpy(CompressedImage(format='jpeg', data=b'not a jpeg'))
    assert err.value.code == 'decode_failed'
    with pytest.raises(InputError):
        compressed_to_numpy(CompressedImage(format='jpeg'))


def test_output_messages_hold_their_arrays_bytes_once():
    """An output message copies its array's bytes once (``byte_array``): the message keeps
    that copy (built with ``check_fields=True``; by default an ``array.array`` field's setter
    copies it again, doubling the memory traffic of every output image). tracemalloc's peak
    while building counts every copy alive at once: one copy is the array's size."""
    import tracemalloc

    from std_msgs.msg import Header

    from romav2_ros.messages import point_cloud
    depth = np.random.default_rng(0).random((480, 640), np.float32)
    points = np.random.default_rng(1).random((120, 160, 4), np.float32)
    for build, nbytes in ((lambda: numpy_to_imgmsg(depth, '32FC1', Header()), depth.nbytes),
                          (lambda: point_cloud(points, Header()), points.nbytes)):
        build()                                  # imports and caches outside the measurement
        tracemalloc.start()
        msg = build()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(msg.data) == nbytes
        assert nbytes <= peak < 1.5 * nbytes, (peak, nbytes)
    empty = point_cloud(points.reshape(-1, 4), Header(), organized=False, count=0)
    assert (empty.height, empty.width, len(empty.data), empty.is_dense) == (1, 0, 0, True)
