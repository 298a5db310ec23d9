"""Shared pytest configuration: markers, the GPU skip, and the loopback-only DDS guard."""
import os
import socket

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason='needs a CUDA device (torch.cuda.is_available() is '
                                           'False on this machine)')
        for item in items:
            if 'gpu' in item.keywords:
                item.add_marker(skip_gpu)


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


@pytest.fixture(scope='session')
def ros_env_guard():
    """Start DDS only when discovery is confined to this machine (see README, "Tests")."""
    action, reason = dds_guard_verdict()
    if action:
        action(reason)
