"""``nan_quantiles`` against numpy's ``nanpercentile`` (the independent oracle)."""
import numpy as np
import pytest
import torch

from romav2_core.quantiles import nan_quantiles

Q = (0.0, 0.1, 0.5, 0.9, 1.0)


@pytest.mark.parametrize('n, nan_share', [(1, 0.0), (2, 0.0), (7, 0.3), (6400, 0.4),
                                          (25_601, 0.9)])
def test_quantiles_equal_numpys_nanpercentile(n, nan_share):
    rng = np.random.default_rng(n)
    values = rng.gamma(2.0, 1.5, n).astype(np.float32)      # skewed: the median is no mean
    values[rng.random(n) < nan_share] = np.nan
    if np.isnan(values).all():
        values[0] = 1.0
    got = nan_quantiles(torch.from_numpy(values).reshape(-1, 1), Q).numpy()
    want = np.nanpercentile(values.astype(np.float64), [100 * q for q in Q])
    # float32 order statistics, one float32 interpolation step: a few float32 ulps
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_quantiles_of_nothing_but_nan_are_nan():
    values = torch.full((5, 3), float('nan'))
    assert torch.isnan(nan_quantiles(values, (0.5, 0.9))).all()


@pytest.mark.gpu
def test_quantiles_on_cuda_equal_the_cpus():
    values = torch.rand(5000) ** 3
    values[::4] = float('nan')
    torch.testing.assert_close(nan_quantiles(values.cuda(), Q).cpu(), nan_quantiles(values, Q))
