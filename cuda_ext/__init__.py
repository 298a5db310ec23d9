"""Fused local-correlation CUDA extension (built on demand)."""
