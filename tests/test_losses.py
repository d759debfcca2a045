"""The seed's four loss pieces (Parts A-D) reproduce the seed's expected values.

Inputs are exactly the seed's test cells (``np.random.seed(1)`` then ``randn``);
the expected numbers are the seed's printed "Expected" values (float32 results
of the Keras/TensorFlow implementation), so agreement is to float32 precision.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.graph import losses

FLOAT32_RTOL = 1e-6


def test_content_loss_matches_seed_part_a():
    np.random.seed(1)
    base = np.random.randn(10, 10, 3)
    output = np.random.randn(10, 10, 3)
    result = losses.content_loss(base, output)
    assert isinstance(result, float)
    assert result == pytest.approx(605.62195, rel=FLOAT32_RTOL)


def test_gram_matrix_matches_seed_part_b():
    np.random.seed(1)
    x = np.random.randn(10, 10, 3)
    expected = np.array([[99.757225, -9.961859, -1.4740529],
                         [-9.961859, 86.854355, -4.1411047],
                         [-1.4740529, -4.1411047, 82.30109]])
    result = np.asarray(losses.gram_matrix(x))
    assert result.shape == (3, 3)
    np.testing.assert_allclose(result, expected, rtol=FLOAT32_RTOL, atol=0)
    np.testing.assert_array_equal(result, result.T)


def test_gram_matrix_of_non_square_map_is_channels_by_channels():
    x = np.random.default_rng(0).standard_normal((5, 7, 4))
    flat = x.reshape(-1, 4)
    np.testing.assert_allclose(losses.gram_matrix(x), flat.T @ flat, rtol=1e-5, atol=1e-5)


def test_style_loss_matches_seed_part_c():
    np.random.seed(1)
    x = np.random.randn(10, 10, 3)
    y = np.random.randn(10, 10, 3)
    # The seed printed 0.09799156 against its expected 0.09799164 (8e-7 apart): float32 noise.
    assert losses.style_loss(x, y) == pytest.approx(0.09799164, rel=2e-6)


def test_style_loss_is_zero_for_equal_features():
    x = np.random.default_rng(1).standard_normal((6, 4, 3))
    assert losses.style_loss(x, x) == 0.0


def test_total_variation_loss_matches_seed_part_d():
    np.random.seed(1)
    x = np.random.randn(1, 10, 10, 3)
    assert losses.total_variation_loss(x) == pytest.approx(937.0538, rel=FLOAT32_RTOL)


def test_total_variation_uses_the_seeds_slicing_of_a_non_square_image():
    # The seed's a/b both stop at H-1 and W-1: the last row's horizontal and the last
    # column's vertical differences are not counted.
    x = np.random.default_rng(2).standard_normal((1, 4, 6, 3))
    a = x[:, :3, :5, :] - x[:, 1:, :5, :]
    b = x[:, :3, :5, :] - x[:, :3, 1:, :]
    assert losses.total_variation_loss(x) == pytest.approx(np.sum(a ** 2 + b ** 2), rel=1e-5)
