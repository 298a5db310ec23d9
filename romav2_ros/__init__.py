"""ROS 2 (rclpy) front end of RoMa v2: node, message conversion, sync, replay."""
