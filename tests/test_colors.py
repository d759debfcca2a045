from pathlib import Path

import numpy as np
from PIL import Image

from engine.io.colors import from_yiq, luminance_only, match_histogram, match_luminance, recombine_luminance, to_yiq
from engine.io.images import load_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Rounding each RGB channel by at most 0.5 moves I by at most 0.5 (0.596 + 0.274 + 0.322)
# and Q by at most 0.5 (0.211 + 0.523 + 0.312): about 0.6 of a level.
IQ_ROUNDING = 0.6


def colour_cloud(mean, cov, shape=(64, 48), seed=0):
    """uint8 (H, W, 3) RGB pixels drawn from a Gaussian: a colour distribution with a known mean and covariance."""
    pixels = np.random.default_rng(seed).multivariate_normal(mean, cov, size=shape)
    assert 0 < pixels.min() and pixels.max() < 255, "the test image must not saturate"
    return np.rint(pixels).astype(np.uint8)


def stats(image):
    pixels = np.asarray(image, np.float64).reshape(-1, 3)
    return pixels.mean(axis=0), np.cov(pixels, rowvar=False, bias=True)


# --- YIQ -----------------------------------------------------------------------------------

def test_yiq_of_primaries_and_white_follow_the_ntsc_matrix():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.float64)
    expected = 255 * np.array([[0.299, 0.596, 0.211], [0.587, -0.274, -0.523],
                               [0.114, -0.322, 0.312], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(to_yiq(rgb)[0], expected, atol=1e-9)


def test_from_yiq_inverts_to_yiq_exactly():
    rgb = np.random.default_rng(1).uniform(0, 255, (5, 7, 3))
    np.testing.assert_allclose(from_yiq(to_yiq(rgb)), rgb, atol=1e-10)
    np.testing.assert_allclose(to_yiq(from_yiq(rgb)), rgb, atol=1e-10)


# --- luminance-only transfer ---------------------------------------------------------------

def test_luminance_only_puts_y_in_every_channel():
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], np.uint8)
    grey = luminance_only(image)
    assert grey.dtype == np.uint8 and grey.shape == image.shape
    # Y = 0.299 R + 0.587 G + 0.114 B, rounded; a grey keeps its level.
    expected = np.array([76, 150, 29, 90])
    assert np.array_equal(grey[0], np.repeat(expected[:, None], 3, axis=1))


def test_luminance_only_keeps_a_pillow_image_a_pillow_image():
    image = Image.new("RGB", (5, 3), (255, 0, 0))
    grey = luminance_only(image)
    assert isinstance(grey, Image.Image) and grey.mode == "RGB" and grey.size == (5, 3)
    assert grey.getpixel((0, 0)) == (76, 76, 76)


def test_matched_style_luminance_has_the_contents_mean_and_std():
    rng = np.random.default_rng(2)
    style = luminance_only(np.clip(rng.normal(60, 10, (40, 50, 3)), 0, 255).astype(np.uint8))
    content = luminance_only(np.clip(rng.normal(150, 30, (30, 20, 3)), 0, 255).astype(np.uint8))
    matched = match_luminance(style, content)
    assert matched.shape == style.shape and matched.dtype == np.uint8
    y, yc = to_yiq(matched)[..., 0], to_yiq(content)[..., 0]
    assert abs(y.mean() - yc.mean()) < 0.1
    assert abs(y.std() - yc.std()) < 0.1
    assert np.array_equal(matched[..., 0], matched[..., 1]) and np.array_equal(matched[..., 0], matched[..., 2])


def test_matched_style_luminance_keeps_the_styles_ordering():
    # An affine map with a positive scale: brighter style pixels stay brighter.
    style = luminance_only(np.random.default_rng(3).integers(80, 120, (16, 16, 3)).astype(np.uint8))
    content = luminance_only(np.random.default_rng(4).integers(0, 255, (16, 16, 3)).astype(np.uint8))
    order = np.argsort(style[..., 0], axis=None, kind="stable")
    assert np.all(np.diff(match_luminance(style, content)[..., 0].ravel()[order].astype(int)) >= 0)


def test_a_flat_style_luminance_becomes_the_contents_mean():
    style = np.full((8, 8, 3), 200, np.uint8)
    content = luminance_only(np.random.default_rng(5).integers(0, 255, (8, 8, 3)).astype(np.uint8))
    matched = match_luminance(style, content)
    assert np.all(matched == round(to_yiq(content)[..., 0].mean()))


def test_recombined_image_has_the_outputs_luminance_and_the_contents_chroma():
    output = colour_cloud([120, 130, 110], np.diag([200.0, 150.0, 250.0]), seed=6)
    content = colour_cloud([140, 120, 100], [[300, 100, 50], [100, 300, 80], [50, 80, 300]], seed=7)
    result = recombine_luminance(output, content)
    assert result.dtype == np.uint8 and result.shape == output.shape
    assert 0 < result.min() and result.max() < 255, "clipping would void the comparison"
    yiq, expected = to_yiq(result), to_yiq(output)
    np.testing.assert_allclose(yiq[..., 0], expected[..., 0], atol=0.5)
    np.testing.assert_allclose(yiq[..., 1:], to_yiq(content)[..., 1:], atol=IQ_ROUNDING)


def test_recombining_resizes_the_content_with_lanczos_to_the_outputs_size():
    output = colour_cloud([128, 128, 128], np.eye(3) * 200, shape=(30, 40), seed=8)
    content = colour_cloud([150, 110, 120], np.eye(3) * 300, shape=(45, 60), seed=9)
    result = recombine_luminance(output, Image.fromarray(content))
    assert isinstance(result, np.ndarray) and result.shape == (30, 40, 3)
    resized = np.asarray(Image.fromarray(content).resize((40, 30), Image.Resampling.LANCZOS))
    inside = (result > 0).all(axis=-1) & (result < 255).all(axis=-1)
    assert inside.mean() > 0.95
    np.testing.assert_allclose(to_yiq(result)[inside][:, 1:], to_yiq(resized)[inside][:, 1:], atol=IQ_ROUNDING)


def test_recombining_a_float_output_returns_unrounded_floats():
    output = np.random.default_rng(10).uniform(60, 200, (6, 8, 3)).astype(np.float32)
    content = np.full((6, 8, 3), 128, np.uint8)  # grey: no chroma, so the result is the output's Y
    result = recombine_luminance(output, content)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, np.repeat(to_yiq(output)[..., :1], 3, axis=-1), atol=1e-3)


# --- colour histogram matching -------------------------------------------------------------

def test_matched_style_has_the_contents_mean_and_covariance():
    style = colour_cloud([90, 110, 140], [[150, 60, -20], [60, 120, 10], [-20, 10, 90]], seed=11)
    content = colour_cloud([140, 120, 100], [[300, 150, 60], [150, 250, 90], [60, 90, 200]], shape=(50, 70), seed=12)
    result = match_histogram(style, content)
    assert result.dtype == np.uint8 and result.shape == style.shape
    assert 0 < result.min() and result.max() < 255, "clipping would void the comparison"
    mean, cov = stats(result)
    mean_c, cov_c = stats(content)
    np.testing.assert_allclose(mean, mean_c, atol=0.1)
    # Rounding adds about 1/12 to each variance.
    np.testing.assert_allclose(cov, cov_c, atol=0.5)


def test_a_style_already_matching_the_content_is_left_unchanged():
    image = colour_cloud([100, 120, 140], [[200, 50, 20], [50, 180, 30], [20, 30, 160]], seed=13)
    assert np.array_equal(match_histogram(image, image), image)


def test_histogram_matching_does_not_depend_on_the_channel_order():
    style = colour_cloud([90, 110, 140], [[150, 60, -20], [60, 120, 10], [-20, 10, 90]], seed=14)
    content = colour_cloud([140, 120, 100], [[300, 150, 60], [150, 250, 90], [60, 90, 200]], seed=15)
    order = [2, 0, 1]
    assert np.array_equal(match_histogram(style[..., order], content[..., order]),
                          match_histogram(style, content)[..., order])


def test_flat_images_are_matched_without_nans():
    flat = np.full((8, 8, 3), (10, 200, 30), np.uint8)
    content = colour_cloud([140, 120, 100], np.eye(3) * 100, shape=(8, 8), seed=16)
    assert np.array_equal(match_histogram(flat, content),
                          np.broadcast_to(np.rint(content.reshape(-1, 3).mean(axis=0)), flat.shape))
    assert np.array_equal(match_histogram(content, flat), flat)


def test_real_style_matched_to_a_real_content_has_its_colour_statistics():
    content, style = load_image(EXAMPLES / "content.jpg"), load_image(EXAMPLES / "style.jpg")
    result = match_histogram(style, content)
    assert isinstance(result, Image.Image) and result.size == style.size and result.mode == "RGB"
    mean, cov = stats(result)
    mean_c, cov_c = stats(content)
    # Real photos may clip a little at 0 and 255, which would pull the statistics slightly.
    np.testing.assert_allclose(mean, mean_c, atol=0.5)
    assert np.linalg.norm(cov - cov_c) < 0.01 * np.linalg.norm(cov_c)
    mean_s, cov_s = stats(style)
    assert np.linalg.norm(cov_s - cov_c) > 0.2 * np.linalg.norm(cov_c), "the example pair must differ to begin with"


def test_real_luminance_transfer_round_trip_keeps_the_contents_chroma():
    content, style = load_image(EXAMPLES / "content.jpg"), load_image(EXAMPLES / "style.jpg")
    content_y = luminance_only(content)
    style_y = match_luminance(luminance_only(style), content_y)
    assert style_y.size == style.size
    # Stand in for a styled output: the matched style luminance at the content's size.
    output = np.asarray(style_y.resize(content.size, Image.Resampling.LANCZOS))
    result = recombine_luminance(output, content)
    assert result.shape == (content.height, content.width, 3)
    inside = (result > 0).all(axis=-1) & (result < 255).all(axis=-1)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(to_yiq(result)[inside][:, 1:], to_yiq(np.asarray(content))[inside][:, 1:],
                               atol=IQ_ROUNDING)
    np.testing.assert_allclose(to_yiq(result)[inside][:, 0], to_yiq(output)[inside][:, 0], atol=0.5)
