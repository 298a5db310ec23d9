"""romav2-replay on broken inputs and interruptions: one-line errors, always a valid bag."""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from rosbags.rosbag2 import Reader

import replay_doubles as doubles
from romav2_ros import replay

NODE = '/romav2_node'


def storage_file(bag):
    return next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))


def truncate(bag):
    path = storage_file(bag)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def garble_middle(bag):
    """Damages the first chunk; rosbags then yields fewer messages without raising."""
    path = storage_file(bag)
    data = bytearray(path.read_bytes())
    data[200:4000] = bytes(range(256)) * 14 + bytes(range(216))
    path.write_bytes(bytes(data))


def bad_metadata(bag):
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: [')


def no_metadata(bag):
    (bag / 'metadata.yaml').unlink()


def empty_dir(bag):
    shutil.rmtree(bag)
    bag.mkdir()


def missing(bag):
    shutil.rmtree(bag)


DAMAGE = {'truncated': truncate, 'garbled': garble_middle, 'bad_metadata': bad_metadata,
          'no_metadata': no_metadata, 'empty_dir': empty_dir, 'missing': missing}


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_broken_input_is_one_line_error(tmp_path, storage, damage, capsys):
    doubles.write_stereo_bag(tmp_path / 'in', storage, pairs=6)
    DAMAGE[damage](tmp_path / 'in')
    status = replay.main([str(tmp_path / 'in'), str(tmp_path / 'out'),
                          '-p', 'model_source:=replay_doubles:oracle', '--outputs', 'warp'])
    err = capsys.readouterr().err
    assert status == 1, err
    errors = [line for line in err.splitlines() if line.startswith('romav2-replay: error: ')]
    assert len(errors) == 1 and 'Traceback' not in err, err
    assert str(tmp_path / 'in') in errors[0]
    if (tmp_path / 'out').exists():  # failed mid-bag: what was done is a readable bag
        with Reader(tmp_path / 'out') as reader:
            assert sum(1 for _ in reader.messages()) >= 0


def test_installed_script_has_no_traceback(tmp_path, replay_exe, script_env):
    doubles.write_stereo_bag(tmp_path / 'in', 'mcap', pairs=2)
    truncate(tmp_path / 'in')
    proc = subprocess.run([str(replay_exe), str(tmp_path / 'in'), str(tmp_path / 'out'),
                           '-p', 'model_source:=replay_doubles:oracle'],
                          env=script_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'romav2-replay: error: cannot open bag {tmp_path / "in"}: ReaderError: File end magic '
        f'is invalid.']


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_interrupt_leaves_a_readable_bag(tmp_path, sig, replay_exe, script_env):
    """Interrupt after >= 3 frames: exit 130, and the bag holds exactly the frames done."""
    pairs = 40
    doubles.write_stereo_bag(tmp_path / 'in', 'mcap', pairs=pairs)
    proc = subprocess.Popen([str(replay_exe), str(tmp_path / 'in'), str(tmp_path / 'out'),
                             '-p', 'model_source:=replay_doubles:slow_oracle',
                             '--outputs', 'warp,certainty,matches'],
                            env=script_env, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            done = re.match(r'romav2-replay: (\d+)/\d+ frames', line)
            if done and int(done.group(1)) >= 3:
                proc.send_signal(sig)
                break
        lines.extend(proc.stderr.read().splitlines(keepends=True))
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = ''.join(lines)
    assert status == 130, err
    assert 'Traceback' not in err
    summary = re.search(r'interrupted in [\d.]+ s: (\d+) processed', err)
    assert summary, err
    processed = int(summary.group(1))
    assert 3 <= processed < pairs
    with Reader(tmp_path / 'out') as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        stored = {}
        for conn, _, _ in reader.messages():
            stored[conn.topic] = stored.get(conn.topic, 0) + 1
    # Every output of every finished frame, no partial frame, and the index agrees.
    expected = {f'{NODE}/{k}': processed for k in ('warp', 'certainty', 'matches')}
    assert stored == expected == counts


def test_interrupt_before_output_is_opened(tmp_path, capsys, monkeypatch):
    doubles.write_stereo_bag(tmp_path / 'in', pairs=1)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(replay, 'build_matcher', interrupted)
    assert replay.main([str(tmp_path / 'in'), str(tmp_path / 'out')]) == 130
    assert not os.path.exists(tmp_path / 'out')
    assert 'interrupted' in capsys.readouterr().err
