"""STEMDL readers, preprocessing maths and the synthetic generator."""

from __future__ import annotations

import shutil

import fsspec
import h5py
import numpy as np
import pytest
from _stemdl_data import TINY, write_tiny

from scibench_data.datasets.stemdl import split_of_material
from scibench_data.formats import SourceFormatError
from scibench_data.formats.stemdl import (
    area_resize,
    area_weights,
    discover_sources,
    log_scale,
    preprocess_stack,
    read_npz_sample,
    read_raw_file,
    scan_raw_file,
)
from scibench_data.synthetic.stemdl import (
    SyntheticSTEMDL,
    assign_splits,
    class_lattice,
    crystal_system,
    draw_material,
    draw_sample,
    generate,
)

FS = fsspec.filesystem("file")


def test_log_scale_hand_computed():
    x = np.array([1.0, np.exp(-5.0), np.exp(-17.0), np.exp(-30.0), 0.0, -1.0, np.nan, np.exp(10.0)])
    expected = np.array([170.0, 120.0, 0.0, 0.0, 0.0, 0.0, 0.0, 255.0])
    np.testing.assert_allclose(log_scale(x), expected, atol=1e-9)


def test_area_resize_integer_factor_is_block_mean():
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 8, 12))
    out = area_resize(img, 4)[..., :, :]
    assert out.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(out[..., :, :], img[..., :, :].reshape(2, 3, 4, 2, 4, 3).mean(axis=(3, 5)))


def test_area_resize_fractional_factor_keeps_the_mean_and_constants():
    w = area_weights(5, 3)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[0], [0.6, 0.4, 0, 0, 0])  # output pixel 0 covers [0, 5/3)
    np.testing.assert_allclose(area_resize(np.full((5, 5), 7.0), 3), 7.0)
    img = np.random.default_rng(1).random((10, 10))
    assert area_resize(img, 4).mean() == pytest.approx(img.mean())


def test_preprocess_stack_is_log_scale_then_resize():
    stack = np.random.default_rng(2).random((3, 8, 8)).astype(np.float32) * 1e-3
    out = preprocess_stack(stack, 4)
    assert out.dtype == np.float32 and out.shape == (3, 4, 4)
    np.testing.assert_allclose(out, log_scale(stack).reshape(3, 4, 2, 4, 2).mean(axis=(2, 4)), rtol=1e-6)


def test_generator_is_deterministic_and_patterns_carry_the_lattice():
    mat = draw_material(200, 1, seed=3)
    a, pa = draw_sample(mat, 0, 64, seed=3)
    b, pb = draw_sample(mat, 0, 64, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pa, pb)
    assert a.shape == (3, 64, 64) and pa.shape == (1, 64, 64) and a.dtype == np.float32
    assert (a >= 0).all() and 0.9 < a[0].sum() < 1.1  # unit sum before Poisson noise
    assert crystal_system(200) == "cubic" and crystal_system(1) == "triclinic"
    cubic = class_lattice(200)
    assert len(set(np.round(cubic.lengths, 9))) == 1 and cubic.angles == (90.0, 90.0, 90.0)
    assert class_lattice(200) == draw_material(200, 0, seed=99).lattice.__class__(
        cubic.lengths, cubic.angles, cubic.centering)  # class geometry does not depend on the seed
    other = draw_sample(draw_material(200, 2, seed=3), 0, 64, seed=3)[0]
    assert not np.array_equal(a, other)


def test_generator_config_is_validated():
    with pytest.raises(ValueError, match="materials_per_class"):
        SyntheticSTEMDL(materials_per_class=2)
    with pytest.raises(ValueError, match="n_classes"):
        SyntheticSTEMDL(n_classes=231)
    with pytest.raises(ValueError, match="unknown STEMDL layout"):
        generate("/nonexistent", "tiff", TINY)


def test_synthetic_splits_share_no_material_and_cover_every_class():
    cfg = SyntheticSTEMDL(n_classes=5, materials_per_class=4, samples_per_material=1, pattern=32)
    splits = assign_splits(cfg)
    assert len(splits) == 20
    for sg in cfg.space_groups:
        assert {s for m, s in splits.items() if m.startswith(f"sg{sg:03d}")} == {"train", "dev", "test"}


def test_raw_files_have_the_real_layout(tmp_path):
    src = write_tiny(tmp_path, "raw")
    listing = discover_sources(FS, str(src))
    assert listing.layout == "raw" and {f.split for f in listing.files} == {"train", "dev", "test"}
    with h5py.File(listing.files[0].path, "r") as h:
        g = h[sorted(h)[0]]
        assert isinstance(g.attrs["space_group"], np.integer)
        assert g["cbed_stack"].shape == (3, 32, 32) and g["cbed_stack"].dtype == np.float32
        assert g["potential"].shape == (1, 32, 32)
    infos = scan_raw_file(FS, listing.files[0].path)
    samples = read_raw_file(FS, listing.files[0].path)
    assert [i.key for i in infos] == [s.key for s in samples] and len(samples) == 4
    assert all(i.material == s.material for i, s in zip(infos, samples))


def test_npz_files_have_the_real_layout(tmp_path):
    src = write_tiny(tmp_path, "npz")
    listing = discover_sources(FS, str(src))
    assert listing.layout == "npz" and len(listing.files) == TINY.n_samples
    with np.load(listing.files[0].path, allow_pickle=False) as z:
        assert z["data"].shape == (3, 16, 16) and z["data"].dtype == np.float32 and z["label"].shape == (1,)
        assert 0 <= z["data"].min() and z["data"].max() <= 255


def test_truncated_hdf5_is_reported_by_name(tmp_path):
    src = write_tiny(tmp_path, "raw")
    path = sorted((src / "train").glob("*.h5"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SourceFormatError, match=path.name) as err:
        scan_raw_file(FS, str(path))
    assert err.value.path == str(path)


def test_pickled_npz_is_refused_by_name(tmp_path):
    path = tmp_path / "sample-0.npz"
    with open(path, "wb") as f:
        np.savez(f, data=np.array([{"evil": 1}], dtype=object), label=np.array([3]))
    with pytest.raises(SourceFormatError, match="sample-0.npz: holds a pickled object array"):
        read_npz_sample(FS, str(path))


@pytest.mark.parametrize("change, message", [
    ("no_label", "missing array 'label'"),
    ("bad_label", "outside 0..230"),
    ("bad_shape", "expected \\(3, H, W\\)"),
    ("garbage", "cannot be read as an npz"),
])
def test_bad_npz_samples_name_file_and_problem(tmp_path, change, message):
    path = tmp_path / "sample-7.npz"
    good = {"data": np.zeros((3, 8, 8), np.float32), "label": np.array([12])}
    if change == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        arrays = dict(good)
        if change == "no_label":
            del arrays["label"]
        elif change == "bad_label":
            arrays["label"] = np.array([400])
        else:
            arrays["data"] = np.zeros((2, 8, 8), np.float32)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    with pytest.raises(SourceFormatError, match=f"sample-7.npz.*{message}"):
        read_npz_sample(FS, str(path))


def test_raw_group_without_space_group_is_reported(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as h:
        h.create_group("mat_0").create_dataset("cbed_stack", data=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(SourceFormatError, match="x.h5.*no attribute 'space_group'"):
        scan_raw_file(FS, str(path))


def test_discovery_refuses_mixed_layouts_and_reports_strays(tmp_path):
    src = write_tiny(tmp_path, "raw")
    mixed = tmp_path / "mixed"
    shutil.copytree(src, mixed)
    (mixed / "sample-0.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="both raw"):
        discover_sources(FS, str(mixed))
    npz = write_tiny(tmp_path, "npz")
    (npz / "test" / "notes.npz").write_bytes(b"")
    (npz / "scratch").mkdir()
    (npz / "scratch" / "sample-99.npz").write_bytes(b"")
    listing = discover_sources(FS, str(npz))
    assert {r.path.rsplit("/", 1)[-1] for r in listing.rejected} == {"notes.npz", "scratch"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no STEMDL sources"):
        discover_sources(FS, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_sources(FS, str(tmp_path / "missing"))


def test_split_of_material_is_stable_and_validated():
    assert split_of_material("sg001-m00") == split_of_material("sg001-m00")
    got = {split_of_material(f"m{i}") for i in range(200)}
    assert got == {"train", "dev", "test"}
    with pytest.raises(ValueError, match="fractions"):
        split_of_material("x", (0.5, 0.5, 0.5))
