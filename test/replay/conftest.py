"""Fixtures of the replay and player tests: the installed console scripts and their env."""
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
if str(HERE.parent / 'ros') not in sys.path:    # node_harness (test_player's node test)
    sys.path.insert(0, str(HERE.parent / 'ros'))


@pytest.fixture
def script_env():
    """Environment for the console scripts: this folder importable (replay_doubles), the
    rest inherited (the ROS wheels' re-exec needs it, see docs/ros2-runtime pitfalls); test/
    too, for matcher_doubles."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(HERE), str(HERE.parent),
                                                      env.get('PYTHONPATH')]))
    env['PYTHONUNBUFFERED'] = '1'
    return env


@pytest.fixture
def replay_exe():
    exe = BIN / 'romav2-replay'
    if not exe.exists():
        pytest.fail(f'{exe} missing: pip install --no-deps --no-build-isolation -e .')
    return exe


@pytest.fixture
def play_exe():
    exe = BIN / 'romav2-play'
    if not exe.exists():
        pytest.fail(f'{exe} missing: pip install --no-deps --no-build-isolation -e .')
    return exe
