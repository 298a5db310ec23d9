"""RoMa v2 dense feature matcher in pure PyTorch (no ROS imports)."""
