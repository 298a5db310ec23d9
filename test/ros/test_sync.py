"""The message_filters-compatible synchronisers, driven without DDS."""
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image

from romav2_ros.sync import ApproximateTimeSynchronizer, ExactTimeSynchronizer, SimpleFilter


def msg(cls, sec, nanosec=0):
    m = cls()
    m.header.stamp = Time(sec=sec, nanosec=nanosec)
    return m


def test_exact_pairs_only_equal_stamps_and_drops_older():
    a, b, out = SimpleFilter(), SimpleFilter(), []
    ExactTimeSynchronizer([a, b], queue_size=3).registerCallback(lambda *m: out.append(m))
    a.signalMessage(msg(Image, 1))
    a.signalMessage(msg(Image, 2))
    b.signalMessage(msg(CameraInfo, 2))
    assert len(out) == 1 and out[0][0].header.stamp.sec == 2
    b.signalMessage(msg(CameraInfo, 1))        # older than the last match: never pairs
    assert len(out) == 1
    for s in range(3, 8):             # queue_size bounds the pending messages
        a.signalMessage(msg(Image, s))
    b.signalMessage(msg(CameraInfo, 3))
    assert len(out) == 1
    b.signalMessage(msg(CameraInfo, 7))
    assert [m.header.stamp.sec for m in out[-1]] == [7, 7]


def test_approximate_pairs_within_slop():
    a, b, out = SimpleFilter(), SimpleFilter(), []
    ApproximateTimeSynchronizer([a, b], queue_size=5, slop=0.02).registerCallback(
        lambda *m: out.append(m))
    a.signalMessage(msg(Image, 1, 0))
    b.signalMessage(msg(Image, 1, 50_000_000))      # 50 ms: too far
    assert not out
    a.signalMessage(msg(Image, 1, 40_000_000))      # 10 ms from b
    assert len(out) == 1
    assert [m.header.stamp.nanosec for m in out[0]] == [40_000_000, 50_000_000]


def test_four_inputs_stereo_order_preserved():
    srcs, out = [SimpleFilter() for _ in range(4)], []
    ExactTimeSynchronizer(srcs, 10).registerCallback(lambda *m: out.append(m))
    for i, s in enumerate(srcs):
        m = msg(Image, 5)
        m.header.frame_id = str(i)
        s.signalMessage(m)
    assert [m.header.frame_id for m in out[0]] == ['0', '1', '2', '3']


def test_a_late_set_is_dropped_once_and_never_restarts_a_sequence():
    """Image and camera_info of t = 1, 2, then a late set at t = 1.5 (both messages), then 3:
    the late set is dropped (one report, although two messages), every frame after the first
    is paired with its predecessor, and no stamp_out_of_order reset happens."""
    import oracle_matchers as om
    from romav2_ros.pipeline import MatchingPipeline, PipelineConfig
    for sync_cls, args in ((ExactTimeSynchronizer, (10,)),
                           (ApproximateTimeSynchronizer, (10, 0.05))):
        image, info, sets, drops = SimpleFilter(), SimpleFilter(), [], []
        sync = sync_cls([image, info], *args)
        sync.registerCallback(lambda *m: sets.append(m))
        sync.registerDropCallback(lambda reason, m: drops.append(reason))
        frames = om.sequence_frames(3)
        for k, (sec, nsec) in enumerate([(1, 0), (2, 0), (1, 500_000_000), (3, 0)]):
            stamp = Time(sec=sec, nanosec=nsec)
            image.signalMessage(om.image_msg(frames[min(k, 2)], 'cam', stamp))
            info.signalMessage(om.camera_info('cam', stamp))
        assert drops == ['late']
        assert [m[0].header.stamp.sec for m in sets] == [1, 2, 3]
        pipe = MatchingPipeline(om.sequential(), PipelineConfig(mode='sequential'))
        results = [pipe.process(m, {'warp'}) for m in sets]   # raises on stamp_out_of_order
        assert [r.paired for r in results] == [False, True, True]
