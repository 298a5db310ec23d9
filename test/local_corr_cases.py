"""Local-correlation test shapes shared by the PyTorch-path and CUDA-kernel tests."""

#: (B, C, H, W, Hb, Wb, radius): non-square, batch > 1, f_B of another size, radius 0..3, and
#: the stride-2 refiner's 48 channels.
CASES = [
    (2, 16, 7, 9, 7, 9, 3),
    (1, 8, 5, 11, 6, 4, 1),
    (3, 12, 6, 6, 6, 6, 0),
    (2, 4, 4, 13, 9, 5, 2),
    (1, 20, 10, 3, 10, 3, 3),
    (2, 48, 12, 16, 12, 16, 1),
]


def case_id(case) -> str:
    return 'B{}C{}_{}x{}_{}x{}_r{}'.format(*case)
