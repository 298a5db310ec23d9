"""Shared pytest configuration: markers, the GPU skip, and the loopback-only DDS guard."""
import pytest
import torch

from dds_guard import dds_guard_verdict


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason='needs a CUDA device (torch.cuda.is_available() is '
                                           'False on this machine)')
        for item in items:
            if 'gpu' in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(scope='session')
def ros_env_guard():
    """Start DDS only when discovery is confined to this machine (see README, "Tests")."""
    action, reason = dds_guard_verdict()
    if action:
        action(reason)
