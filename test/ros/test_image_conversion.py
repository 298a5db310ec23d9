"""Image <-> numpy conversion: every encoding, padding, byte order, compression, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image

from romav2_ros.image_conversion import (ENCODINGS, InputError, compressed_to_numpy,
                                         imgmsg_to_numpy, numpy_to_compressed,
                                         numpy_to_imgmsg, to_rgb_float)


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
    assert np.isfinite(to_rgb_float(numpy_to_imgmsg(arr, '32FC1'))).all()


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16'])
def test_model_input_is_rgb_float(encoding):
    rgb = random_array('rgb8', 5, 6)
    arr = {'rgb8': rgb, 'bgr8': rgb[..., ::-1], 'rgba8': np.dstack([rgb, rgb[..., :1]]),
           'bgra8': np.dstack([rgb[..., ::-1], rgb[..., :1]]), 'mono8': rgb[..., 0],
           'mono16': rgb[..., 0].astype(np.uint16) * 257}[encoding]
    out = to_rgb_float(numpy_to_imgmsg(np.ascontiguousarray(arr), encoding))
    want = rgb / 255.0 if encoding not in ('mono8', 'mono16') else \
        np.repeat(rgb[..., :1] / 255.0, 3, axis=2)
    assert out.dtype == np.float32 and out.shape == (5, 6, 3)
    np.testing.assert_allclose(out, want, atol=1e-6)


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
    back = to_rgb_float(msg)
    want = to_rgb_float(numpy_to_imgmsg(arr, encoding))
    if fmt == 'png':
        np.testing.assert_allclose(back, want, atol=1e-6)
    else:
        assert np.abs(back - want).mean() < 0.02
    assert enc in ('bgr8', 'bgra8', 'mono8', 'mono16')


@pytest.mark.parametrize('kwargs,code', [
    (dict(encoding='bayer_rggb8', height=2, width=2, step=2, data=bytes(4)),
     'unsupported_encoding'),
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
