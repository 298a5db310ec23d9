"""Shared pytest configuration: markers, the GPU skip, and the loopback-only DDS guard."""
import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason='needs a CUDA device (torch.cuda.is_available() is '
                                           'False on this machine)')
        for item in items:
            if 'gpu' in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(scope='session')
def ros_env_guard():
    """Refuse to start DDS unless discovery is confined to this machine (see README)."""
    if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST' or \
            os.environ.get('ROS_DOMAIN_ID', '0') == '0':
        pytest.fail('rclpy tests must run through scripts/run_tests.sh (private network '
                    'namespace, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, non-default '
                    'ROS_DOMAIN_ID)')
