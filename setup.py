"""ament_python package romav2_ros: the RoMa v2 core (romav2_core) and its ROS 2 node."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'romav2_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=['romav2_core', 'romav2_core.*', 'romav2_ros', 'romav2_ros.*',
                                    'cuda_ext', 'cuda_ext.*']),
    package_data={'cuda_ext': ['*.cu', '*.cpp']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + PACKAGE + '/rviz', glob('rviz/*.rviz')),
        ('share/' + PACKAGE + '/msg', glob('msg/*.msg')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='romav2_ros maintainers',
    maintainer_email='romav2-ros@example.com',
    description='RoMa v2 dense feature matching as a ROS 2 perception node.',
    license='MIT',
    extras_require={'test': ['pytest'], 'fleet': ['ray==2.60.0']},
    entry_points={
        'console_scripts': [
            'romav2_node = romav2_ros.node:main',
            'romav2-replay = romav2_ros.replay:main',
            'romav2-play = romav2_ros.player:main',
            'romav2-batch = romav2_ros.fleet:main',
        ],
    },
)
