"""Bad-input matrix through the node's own worker path, in-process (no DDS).

Each bad input: refused with its code, counted in the diagnostics, logged once (then at most
every LOG_REPEAT_S), and the next good input is processed normally.
"""
import numpy as np
import pytest
from builtin_interfaces.msg import Time

import fault_matchers as fm
from inprocess_node import InProcessNode
from romav2_ros import image_conversion
from romav2_ros.image_conversion import MAX_IMAGE_PIXELS, imgmsg_to_numpy
from romav2_ros.sync import ExactTimeSynchronizer, SimpleFilter

WANTED = ('warp', 'certainty', 'matches', 'relative_pose')


def t(k: int, sec: int = 100) -> Time:
    return Time(sec=sec + k // 10, nanosec=(k % 10) * 100_000_000)


def nan_in(field, value=float('nan')):
    def breakage(left, li, right, ri):
        arr = list(getattr(ri, field))
        arr[0] = value
        setattr(ri, field, arr)
    return breakage


def set_attrs(which, **attrs):
    def breakage(left, li, right, ri):
        msg = {'left': left, 'right': right, 'li': li, 'ri': ri}[which]
        for k, v in attrs.items():
            setattr(msg, k, v(msg) if callable(v) else v)
    return breakage


def smaller_right(left, li, right, ri):
    small = fm.image(7, right.header.stamp, 'right_optical', h=fm.H // 2, w=fm.W // 2)
    right.height, right.width, right.step, right.data = small.height, small.width, \
        small.step, small.data


BAD = {
    'unsupported_encoding': set_attrs('left', encoding='nv21'),
    'zero_size': set_attrs('left', height=0, width=0, step=0, data=b''),
    # 100000 x 100000 declared with a few KB of data: refused on the header alone
    'too_large': set_attrs('left', height=100_000, width=100_000, step=300_000),
    'step_mismatch': set_attrs('left', step=10),                       # step < width * 3
    'step_mismatch/data_length': set_attrs('right', data=lambda m: bytes(m.data)[:-1]),
    'size_mismatch': smaller_right,
    'nan_camera_info/K': nan_in('k'),
    'nan_camera_info/P_inf': nan_in('p', float('inf')),
    'nan_camera_info/D': nan_in('d'),
    'nan_camera_info/R_-inf': nan_in('r', float('-inf')),
}


@pytest.fixture
def node():
    n = InProcessNode('stereo', wanted=WANTED).build()
    yield n


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_stereo_input_is_counted_logged_once_and_survived(node, case):
    code = case.split('/')[0]
    node.feed(*fm.stereo_set(0, t(0)))
    assert len(node.outputs('warp')) == 1
    for k in (1, 3):
        msgs = fm.stereo_set(k, t(k))
        BAD[case](*msgs)
        node.feed(*msgs)
        assert len(node.outputs('warp')) == (k + 1) // 2, 'a bad set produced an output'
        node.feed(*fm.stereo_set(k + 1, t(k + 1)))      # the next good set is processed
        assert node.outputs('warp')[-1].header.stamp == t(k + 1)
    assert node.bad(code) == 2
    assert node.log_count(f'bad input [{code}]') == 1, node.logger.text()
    assert node.diagnostics.counts['processed'] == 3
    status = {kv.key: kv.value for kv in node.diagnostics.statuses()[0].values}
    assert status[f'bad_input.{code}'] == '2'


def test_the_size_limit_is_documented_and_applies_to_every_path():
    assert MAX_IMAGE_PIXELS == 8192 * 4096
    ok = fm.image(0, t(0))
    assert imgmsg_to_numpy(ok, max_pixels=fm.W * fm.H).shape == (fm.H, fm.W, 3)
    for convert in (lambda m: imgmsg_to_numpy(m, max_pixels=fm.W * fm.H - 1),
                    lambda m: image_conversion.to_rgb(m, fm.W * fm.H - 1)):
        with pytest.raises(image_conversion.InputError) as err:
            convert(ok)
        assert err.value.code == 'too_large' and 'MP' in err.value.message
    png = image_conversion.numpy_to_compressed(imgmsg_to_numpy(ok), 'rgb8', 'png')
    with pytest.raises(image_conversion.InputError) as err:
        image_conversion.to_rgb(png, fm.W * fm.H - 1)
    assert err.value.code == 'too_large'


def test_uncalibrated_camera_info_gives_dense_outputs_but_no_pose(node):
    left, li, right, ri = fm.stereo_set(1, t(1))
    li.k = [0.0] * 9
    node.feed(left, li, right, ri)
    assert len(node.outputs('warp')) == 1 and not node.outputs('relative_pose')
    assert node.bad('uncalibrated') == 1 and node.log_count('bad input [uncalibrated]') == 1


def test_stereo_pairs_stand_alone_whatever_their_stamps(node):
    """Stereo pairs are independent: a triggered rig's gaps over max_stamp_jump, a repeated
    stamp, a jump back in time are all processed, none counted as bad input (a set older
    than the last one is the synchroniser's business: late_input, test_sync.py)."""
    stamps = [t(0), t(1), t(1), t(0), t(3, sec=200), t(4, sec=10)]
    for k, stamp in enumerate(stamps):
        node.feed(*fm.stereo_set(k, stamp))
    assert [m.header.stamp for m in node.outputs('warp')] == stamps
    assert not node.diagnostics.errors


def test_sequential_clock_jump_back_resets_and_is_reported():
    node = InProcessNode('sequential', wanted=('warp', 'matches')).build()
    info = fm.camera_info('cam', t(0))

    def frame(k, sec=100):
        node.feed(fm.image(k, t(k, sec), 'cam'), info)
        return [m.header.stamp for m in node.outputs('warp')]

    frame(0)
    frame(1)
    assert frame(2) == [t(1), t(2)]
    assert frame(3, sec=10) == [t(1), t(2)]             # looped bag: back 90 s, restart
    assert node.bad('stamp_jump') == 1, 'a restart after a jump must be counted'
    assert node.log_count('bad input [stamp_jump]') == 1
    assert frame(4, sec=10)[-1] == t(4, sec=10)          # pairs with the restarted frame
    assert node.outputs('matches')[-1].stamp_b == t(3, sec=10)
    frame(4, sec=10)                                    # duplicate stamp
    assert node.bad('stamp_out_of_order') == 1
    assert 'duplicate stamp' in node.logger.text()
    n = len(node.outputs('warp'))
    frame(5, sec=10)                                    # restarts: no output
    assert len(node.outputs('warp')) == n
    assert frame(6, sec=10)[-1] == t(6, sec=10)
    assert node.outputs('matches')[-1].stamp_b == t(5, sec=10)


def test_nan_pixels_in_float_images_are_processed():
    node = InProcessNode('stereo', wanted=('warp', 'certainty')).build()
    stamp = t(1)
    left = fm.float_image(1, stamp, 'left_optical')
    right = fm.float_image(2, stamp, 'right_optical')
    assert np.isnan(imgmsg_to_numpy(left)).mean() > 0.1
    rgb = image_conversion.to_rgb(left)
    assert np.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1
    node.feed(left, fm.camera_info('left_optical', stamp), right,
              fm.camera_info('right_optical', stamp, tx=0.1))
    assert len(node.outputs('warp')) == 1 and not node.diagnostics.errors
    certainty = imgmsg_to_numpy(node.outputs('certainty')[0])
    assert np.isfinite(certainty).all()


def test_late_camera_info_is_paired_by_the_synchroniser():
    """camera_info arriving 3 frames after its image (within sync_queue_size) still pairs."""
    node = InProcessNode('sequential', wanted=('warp',)).build()
    image, info = SimpleFilter(), SimpleFilter()
    sync = ExactTimeSynchronizer([image, info], queue_size=10)
    pairs = []
    sync.registerCallback(lambda *m: pairs.append(m))
    for k in range(12):
        image.signalMessage(fm.image(k, t(k), 'cam'))
        if k >= 3:
            info.signalMessage(fm.camera_info('cam', t(k - 3)))
        while pairs:
            node.feed(*pairs.pop(0))
    for k in range(9, 12):
        info.signalMessage(fm.camera_info('cam', t(k)))
        while pairs:
            node.feed(*pairs.pop(0))
    assert [m.header.stamp for m in node.outputs('warp')] == [t(k) for k in range(1, 12)]
    assert not node.diagnostics.errors and node.diagnostics.counts['dropped'] == 0


def test_camera_info_that_never_arrives_is_named_in_the_warning():
    node = InProcessNode('stereo').build()
    d = node.diagnostics
    for topic in ('/left/image_rect', '/right/image_rect'):
        d.seen(topic)
    d._last_pair -= 6.0   # 6 s without a synchronised set
    status = d.statuses()[0]
    assert status.level == status.WARN
    assert '/left/camera_info (nothing received)' in status.message
    assert '/right/camera_info (nothing received)' in status.message
    assert 'image_rect (' not in status.message     # the images do arrive
    assert 'use_sim_time' in status.message and 'sync_slop' in status.message
    d._seen['/right/image_rect'] -= 10.0            # a topic that stopped
    assert '/right/image_rect (nothing for 1' in d.statuses()[0].message


def test_pixel_count_overflow_is_refused_before_allocation():
    """A header claiming 2^31 x 2^31 pixels is refused without touching the data."""
    msg = fm.image(0, t(0))
    msg.width = msg.height = 2 ** 31 - 1
    with pytest.raises(image_conversion.InputError) as err:
        imgmsg_to_numpy(msg)
    assert err.value.code == 'too_large'
