"""Write PNG pictures of a romav2-replay output bag: the node's rgb8 views and the certainty.

    python scripts/demo_pictures.py OUT_BAG PICTURE_DIR [--prefix NAME]

One PNG per visual topic for the first processed pair (matches side by side, B warped into A,
covariance std heat map, certainty as a grey image).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from romav2_ros import bag_io
from romav2_ros.image_conversion import imgmsg_to_numpy

VIEWS = ('matches_viz', 'warp_viz', 'covariance_viz', 'certainty')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', type=Path)
    parser.add_argument('out', type=Path)
    parser.add_argument('--prefix', default='')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    written = {}
    with bag_io.open_reader(args.bag) as reader:
        wanted = [c for c in reader.connections if c.topic.rsplit('/', 1)[-1] in VIEWS]
        for conn, _, raw in bag_io.read_messages(reader, wanted):
            view = conn.topic.rsplit('/', 1)[-1]
            if view in written:
                continue
            image = imgmsg_to_numpy(bag_io.deserialize(raw, conn.msgtype))
            if view == 'certainty':
                image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
            else:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            path = args.out / f'{args.prefix}{view}.png'
            cv2.imwrite(str(path), image)
            written[view] = path
    for view in VIEWS:
        print(f'  {written[view]}' if view in written else f'  ({view}: not in the bag)')


if __name__ == '__main__':
    main()
