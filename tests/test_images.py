import os

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from engine.errors import ImageError
from engine.io.images import check_writable, deprocess, load_image, preprocess, save_image, working_size


def noise(height=24, width=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rgb(image):
    return np.asarray(image, np.int16)


# --- loading ---------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff"])
def test_lossless_files_load_with_exact_pixels(tmp_path, suffix):
    pixels = noise()
    Image.fromarray(pixels).save(tmp_path / f"in{suffix}")
    image = load_image(tmp_path / f"in{suffix}")
    assert image.mode == "RGB" and image.size == (32, 24)
    assert np.array_equal(np.asarray(image), pixels)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)   # stored left half red
    pixels[:, 20:] = (0, 0, 255)   # stored right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: a viewer turns the stored image 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)

    image = load_image(tmp_path / "turned.jpg")

    assert image.size == (20, 40)
    top, bottom = rgb(image)[5, 10], rgb(image)[35, 10]  # the stored left edge is now on top
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def swapped_red_blue_profile() -> bytes:
    """sRGB with its red and blue primaries swapped: a valid RGB profile that is not sRGB."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    entries = {bytes(data[132 + 12 * i:136 + 12 * i]): 132 + 12 * i
               for i in range(int.from_bytes(data[128:132], "big"))}
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    data[red + 4:red + 12], data[blue + 4:blue + 12] = data[blue + 4:blue + 12], data[red + 4:red + 12]
    return bytes(data)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_embedded_icc_profile_is_converted_to_srgb(tmp_path, suffix):
    red = np.zeros((8, 8, 3), np.uint8)
    red[...] = (255, 0, 0)
    Image.fromarray(red).save(tmp_path / f"tagged{suffix}", icc_profile=swapped_red_blue_profile())
    Image.fromarray(red).save(tmp_path / f"plain{suffix}")

    tagged, plain = load_image(tmp_path / f"tagged{suffix}"), load_image(tmp_path / f"plain{suffix}")

    assert tagged.mode == "RGB"
    assert rgb(plain)[4, 4, 0] > 240 and rgb(plain)[4, 4, 2] < 15  # untagged pixels are taken as sRGB
    assert rgb(tagged)[4, 4, 2] > 240 and rgb(tagged)[4, 4, 0] < 15  # its "red" primary is sRGB blue


def test_an_unusable_icc_profile_is_ignored(tmp_path):
    Image.fromarray(noise()).save(tmp_path / "bad_icc.png", icc_profile=b"not a profile at all")
    assert np.array_equal(np.asarray(load_image(tmp_path / "bad_icc.png")), noise())


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)  # black everywhere
    rgba[0, 0, 3] = 255  # opaque
    rgba[0, 1, 3] = 0    # fully transparent
    rgba[1, :, 3] = 128  # half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")

    pixels = rgb(load_image(tmp_path / "alpha.png"))

    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(pixels[1] - 127) <= 1)


def test_grey_with_alpha_is_composited_on_white(tmp_path):
    Image.fromarray(np.array([[[0, 255], [0, 0]]], np.uint8), "LA").save(tmp_path / "la.png")
    assert rgb(load_image(tmp_path / "la.png"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "palette.png", transparency=1)
    assert rgb(load_image(tmp_path / "palette.png"))[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(tmp_path / "grey16.png")
    image = load_image(tmp_path / "grey16.png")
    assert image.mode == "RGB"
    assert rgb(image)[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]


def test_grey_and_cmyk_load_as_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 77, np.uint8), "L").save(tmp_path / "grey.png")
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    grey = load_image(tmp_path / "grey.png")
    assert grey.mode == "RGB" and rgb(grey)[0, 0].tolist() == [77, 77, 77]
    cmyk = load_image(tmp_path / "cmyk.jpg")
    assert cmyk.mode == "RGB" and np.all(rgb(cmyk) > 245)  # no ink is white


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_an_image_error(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(noise(128, 128)).save(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(ImageError, match="truncated") as error:
        load_image(cut)
    assert str(cut) in str(error.value) and "\n" not in str(error.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_non_image_is_an_image_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageError, match="not an image") as error:
        load_image(path)
    assert str(path) in str(error.value)


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "absent.jpg")


def test_folder_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_unreadable_file_is_an_image_error(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    Image.fromarray(noise()).save(path)
    if os.geteuid() != 0:  # root reads anything, so simulate the refusal there
        path.chmod(0)
    else:
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError, match="permission denied") as error:
        load_image(path)
    assert str(path) in str(error.value)


# --- sizes -----------------------------------------------------------------

@pytest.mark.parametrize("image_size, size, multiple, expected", [
    ((1000, 750), None, 1, (1000, 750)),
    ((1000, 750), 512, 1, (512, 384)),
    ((750, 1000), 512, 1, (384, 512)),
    ((400, 300), 800, 1, (800, 600)),        # upscaling too: size is the output's edge
    ((1001, 750), None, 16, (1008, 752)),    # 62.56 -> 63 and 46.9 -> 47 multiples
    ((1000, 740), None, 8, (1000, 744)),     # 92.5 rounds half up
    ((5, 3), None, 16, (16, 16)),            # never below one multiple
    ((4000, 30), 512, 16, (512, 16)),
])
def test_working_size(image_size, size, multiple, expected):
    assert working_size(image_size, size, multiple) == expected


# --- network input -----------------------------------------------------------

def test_preprocess_uses_the_keras_caffe_convention():
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[1, 2] = (10, 20, 30)  # R, G, B
    x = preprocess(Image.fromarray(pixels), (3, 2))
    assert x.dtype == np.float32 and x.shape == (1, 3, 2, 3) and x.flags.c_contiguous
    # BGR order minus the ImageNet means (B 103.939, G 116.779, R 123.68)
    np.testing.assert_allclose(x[0, :, 1, 2], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 0, 0], [-103.939, -116.779, -123.68], rtol=1e-6)


def test_preprocess_resizes_to_width_height():
    x = preprocess(Image.fromarray(noise(24, 32)), (16, 12))
    assert x.shape == (1, 3, 12, 16)


def test_preprocess_keeps_a_flat_colour_through_resizing():
    x = preprocess(Image.new("RGB", (50, 40), (200, 100, 50)), (20, 16))
    assert np.array_equal(deprocess(x), np.broadcast_to(np.uint8([200, 100, 50]), (16, 20, 3)))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_preprocess_then_deprocess_returns_the_loaded_pixels(tmp_path, suffix):
    Image.fromarray(noise()).save(tmp_path / f"in{suffix}")
    image = load_image(tmp_path / f"in{suffix}")
    back = deprocess(preprocess(image, image.size))
    assert back.dtype == np.uint8 and back.shape == (24, 32, 3)
    assert np.abs(back.astype(int) - np.asarray(image, int)).max() <= 1


def test_deprocess_clips_and_rounds():
    x = np.zeros((1, 3, 1, 3), np.float32)
    x[0, :, 0, 0] = 1000.0       # far above white
    x[0, :, 0, 1] = -1000.0      # far below black
    x[0, :, 0, 2] = [0.4 - 103.939, 0.6 - 116.779, 1.49 - 123.68]  # B, G, R
    assert deprocess(x)[0].tolist() == [[255, 255, 255], [0, 0, 0], [1, 1, 0]]


def test_deprocess_rejects_other_shapes():
    with pytest.raises(ValueError):
        deprocess(np.zeros((3, 4, 4), np.float32))


# --- saving ------------------------------------------------------------------

@pytest.mark.parametrize("suffix, tolerance", [
    (".png", 0), (".bmp", 0), (".tif", 0), (".tiff", 0), (".jpg", 40), (".jpeg", 40), (".webp", 40), (".PNG", 0),
])
def test_save_image_writes_the_format_of_the_suffix(tmp_path, suffix, tolerance):
    pixels = np.zeros((24, 32, 3), np.uint8)
    pixels[:, 16:] = (250, 120, 10)
    path = tmp_path / "sub" / f"out{suffix}"
    save_image(pixels, path)
    with Image.open(path) as written:
        expected = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG",
                    ".jpeg": "JPEG", ".webp": "WEBP"}[suffix.lower()]
        assert written.format == expected
    assert np.abs(np.asarray(load_image(path), int) - pixels).max() <= tolerance
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind


def test_save_image_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ImageError, match=r"\.gif"):
        save_image(noise(), tmp_path / "out.gif")
    assert not (tmp_path / "out.gif").exists()


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path_before = list(tmp_path.iterdir())

    def half_write(self, fp, *args, **kwargs):
        with open(fp, "wb") as half:
            half.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(ImageError, match="disk full"):
        save_image(noise(), path)
    assert list(tmp_path.iterdir()) == path_before


def test_save_image_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.png"
    save_image(np.zeros((4, 4, 3), np.uint8), path)
    save_image(np.full((4, 4, 3), 9, np.uint8), path)
    assert rgb(load_image(path))[0, 0].tolist() == [9, 9, 9]


# --- checking before computing ---------------------------------------------------

def test_check_writable_accepts_a_new_nested_folder_and_creates_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b" / "out.jpg")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_accepts_an_existing_file(tmp_path):
    (tmp_path / "out.png").write_bytes(b"old")
    check_writable(tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == b"old"


@pytest.mark.parametrize("relative, words", [
    ("out.gif", ["unknown image type", ".gif", ".png"]),
    ("out", ["unknown image type"]),
    ("a_file.txt/out.png", ["a_file.txt", "not a folder"]),
    ("a_file.txt/deeper/out.png", ["a_file.txt", "not a folder"]),
    ("a_folder.png", ["folder"]),
])
def test_check_writable_refuses(tmp_path, relative, words):
    (tmp_path / "a_file.txt").write_text("x")
    (tmp_path / "a_folder.png").mkdir()
    with pytest.raises(ImageError) as error:
        check_writable(tmp_path / relative)
    for word in words:
        assert word in str(error.value)
    assert "\n" not in str(error.value)


def test_check_writable_refuses_a_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:  # root writes anywhere, so simulate the refusal there
        import engine.io.images

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(engine.io.images.tempfile, "TemporaryFile", refuse)
    try:
        with pytest.raises(ImageError, match="not writable"):
            check_writable(folder / "new" / "out.png")
    finally:
        folder.chmod(0o755)
