"""The loopback-only DDS guard: run, skip with the reason, or fail (see README, "Tests").

A module of its own, not part of conftest.py: several directories have a conftest.py, and
``import conftest`` gets whichever pytest loaded last."""
import os
import socket

import pytest


#: Set by scripts/run_tests.sh: 'netns' inside its private network namespace, 'localhost' where
#: none can be created. With it, an unconfined DDS test fails (CI never skips one silently);
#: without it (e.g. ``colcon test`` on a robot), such tests skip and say why.
CONFINEMENT_VAR = 'ROMAV2_TEST_CONFINEMENT'


def dds_confinement_problems(confinement: str) -> list:
    """What keeps DDS from being confined as ``confinement`` ('netns' or 'localhost') asks."""
    problems = []
    if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST':
        problems.append('ROS_AUTOMATIC_DISCOVERY_RANGE is {!r}, not LOCALHOST'.format(
            os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')))
    if os.environ.get('ROS_DOMAIN_ID', '0') == '0':
        problems.append('ROS_DOMAIN_ID is the default 0')
    if confinement == 'netns':
        interfaces = sorted(name for _, name in socket.if_nameindex())
        if interfaces != ['lo']:
            problems.append('the network namespace has {} (a private one has only lo)'.format(
                ', '.join(interfaces)))
    return problems


def dds_guard_verdict():
    """``(None, '')`` to let a DDS test run, else ``(pytest.skip or pytest.fail, reason)``."""
    asked = os.environ.get(CONFINEMENT_VAR)
    if asked in ('netns', 'localhost'):
        problems = dds_confinement_problems(asked)
        if problems:
            return pytest.fail, '{}={} but {}'.format(CONFINEMENT_VAR, asked, '; '.join(problems))
        return None, ''
    problems = dds_confinement_problems('netns')
    if problems:
        return pytest.skip, ('starts DDS, so it runs only inside the private network namespace '
                             'of scripts/run_tests.sh: ' + '; '.join(problems))
    return None, ''
