"""The quantisation study's tools (benchmarks/quantisation.py): 1-D k-means against a
brute-force optimum, PSNR by hand, SSIM against scikit-image where it is installed."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.quantisation import kmeans_1d, psnr, quantise_layers, ssim


def _optimal_sse(values: np.ndarray, k: int) -> float:
    """The exact 1-D k-means optimum by the plain dynamic programme over the sorted values (O(k n^2))."""
    x = np.sort(values.astype(np.float64))
    n = len(x)
    s1, s2 = np.concatenate([[0], np.cumsum(x)]), np.concatenate([[0], np.cumsum(x * x)])
    best = np.concatenate([[0.0], np.full(n, np.inf)])  # best[j]: x[:j] in c clusters
    for c in range(1, k + 1):
        new = np.full(n + 1, np.inf)
        for j in range(c, n + 1):
            i = np.arange(c - 1, j)  # the last cluster is x[i:j]
            new[j] = np.min(best[i] + s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / (j - i))
        best = new
    return float(best[n])


@pytest.mark.parametrize("bins", [1 << 15, 64])
def test_kmeans_reaches_the_optimum_exactly_and_near_it_from_bins(bins):
    # Heavy tails, like VGG kernels: where Lloyd's algorithm from the quantiles stalls well above the optimum.
    values = np.random.default_rng(0).laplace(size=300) * 0.05
    codes, centroids = kmeans_1d(values, levels=8, bins=bins)
    sse = float(((centroids.astype(np.float64)[codes] - values) ** 2).sum())
    optimum = _optimal_sse(values, 8)
    assert sse == pytest.approx(optimum, rel=1e-6) if bins > values.size else optimum <= sse <= 1.01 * optimum


def test_kmeans_ends_at_a_fixed_point_nearest_centroid_and_cluster_means():
    values = np.random.default_rng(1).laplace(size=(8, 16, 3, 3)).astype(np.float32)
    codes, centroids = kmeans_1d(values, levels=64)
    assert codes.dtype == np.uint8 and codes.shape == values.shape and centroids.shape == (64,)
    assert np.all(np.diff(centroids) > 0)
    distances = np.abs(values[..., None] - centroids)
    chosen = np.take_along_axis(distances, codes[..., None].astype(np.int64), -1)[..., 0]
    assert np.allclose(chosen, distances.min(-1))
    for c in np.unique(codes)[::5]:
        assert centroids[c] == pytest.approx(values[codes == c].mean(), rel=1e-5, abs=1e-6)


def test_at_most_256_distinct_weights_are_kept_exactly():
    table = np.linspace(-1, 1, 200).astype(np.float32)
    values = table[np.random.default_rng(2).integers(0, 200, (16, 8, 3, 3))]
    quantised, errors = quantise_layers({"block1_conv1": (values, np.ones(16, np.float32))})
    assert np.array_equal(quantised["block1_conv1"][0], values) and errors["block1_conv1"] == 0.0


def test_psnr_of_a_unit_step_everywhere():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a + 1, a) == pytest.approx(10 * np.log10(255 ** 2))
    assert psnr(a, a) == float("inf")


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)
    noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(noisy, a) < 0.9


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="the SSIM reference: pip install scikit-image")
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (33, 45, 3)).astype(np.float64)
    b = np.clip(a * 0.7 + 40 + rng.normal(0, 20, a.shape), 0, 255)
    expected = metrics.structural_similarity(a, b, data_range=255, channel_axis=2, gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
