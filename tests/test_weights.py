"""Reading VGG conv weights: every supported layout yields the same OIHW arrays."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import engine
import vgg_reference


@pytest.mark.parametrize("kind", ["keras2-h5", "keras3-h5", "npz"])
def test_reader_returns_the_written_kernels_as_oihw(kind, vgg19_files, vgg19_weights):
    loaded = engine.load_weights(vgg19_files[kind], "vgg19")
    assert loaded.arch == "vgg19"
    assert list(loaded.layers) == list(vgg_reference.conv_layer_names("vgg19"))
    for name, (w, b) in vgg19_weights.items():
        got_w, got_b = loaded.layers[name]
        assert got_w.dtype == np.float32 and got_b.dtype == np.float32
        np.testing.assert_array_equal(got_w, w, err_msg=name)
        np.testing.assert_array_equal(got_b, b, err_msg=name)


def test_architecture_is_inferred_from_the_conv_count(vgg19_files):
    assert engine.load_weights(vgg19_files["npz"]).arch == "vgg19"


def test_save_npz_leaves_only_the_npz(vgg19_files):
    folder = vgg19_files["npz"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in vgg19_files.values())


def test_weights_error_names_the_file(bad_weights):
    path, arch, fragments = bad_weights
    with pytest.raises(engine.WeightsError) as info:
        engine.load_weights(path, arch)
    assert str(path) in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_h5py_names_the_extra_to_install(tmp_path, monkeypatch):
    path = tmp_path / "vgg19_notop.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(engine.WeightsError) as info:
        engine.load_weights(path, "vgg19")
    message = str(info.value)
    assert "h5py" in message and "nst-engine[h5]" in message and str(path) in message
