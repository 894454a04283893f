"""pyganx.data: robust image loading, transforms, folder datasets, the bundled demo sets
and `pyganx data export`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pyganx.cli import main as cli_main
from pyganx.data import (
    EvalTransform,
    ImageError,
    LabelledImages,
    PairedImages,
    TrainTransform,
    UnpairedImages,
    demo,
    list_images,
    load_image,
    load_size_for,
)


def _gradient(w=12, h=8, mode="RGB"):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
    a[..., 1] = np.linspace(0, 255, h).astype(np.uint8)[:, None]
    return Image.fromarray(a, "RGB").convert(mode)


def test_load_image_applies_exif_orientation(tmp_path):
    img = _gradient(12, 8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (8, 12) and out.mode == "RGB"


def test_load_image_modes(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[3, 3]) == (255, 255, 255)  # on white
    deep = Image.fromarray(np.array([[0, 65535], [32768, 1000]], np.uint16))
    deep.save(tmp_path / "d.png")
    g = np.asarray(load_image(tmp_path / "d.png", channels=1))
    assert g.dtype == np.uint8 and g[0, 0] == 0 and g[0, 1] == 255 and 127 <= g[1, 0] <= 128
    _gradient().convert("P").save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif").mode == "RGB"
    _gradient().save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg", channels=1).mode == "L"


def test_corrupt_image_is_reported_by_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="broken.png: cannot read image"):
        load_image(bad)
    (tmp_path / "notes.txt").write_text("x")
    assert list_images(tmp_path) == [bad]
    with pytest.raises(ImageError, match="not a folder"):
        list_images(tmp_path / "missing")


def test_train_transform_sizes_and_determinism():
    img = _gradient(40, 30)
    t = TrainTransform(32)
    assert load_size_for(256) == 286 and load_size_for(32) == 36
    a = t(img, torch.Generator().manual_seed(3))
    b = t(img, torch.Generator().manual_seed(3))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert EvalTransform(16)(img).shape == (3, 16, 16)
    # without flips, a left-to-right ramp stays increasing
    nf = TrainTransform(32, flip=False)
    for s in range(5):
        r = nf(img, torch.Generator().manual_seed(s))[0]
        assert (r[:, -1] > r[:, 0]).all()


def _folder(root, n, color):
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (10, 10), (color, i * 10, 0)).save(root / f"{i}.png")
    return root


def test_unpaired_images(tmp_path):
    a, b = _folder(tmp_path / "A", 5, 200), _folder(tmp_path / "B", 3, 50)
    ds = UnpairedImages(a, b, TrainTransform(8, load_size=9), seed=1)
    assert len(ds) == 5 and ds.channels == 3
    x = ds[4]
    assert x["A"].shape == (3, 8, 8) and x["B"].shape == (3, 8, 8)
    assert torch.isclose(x["A"][0].mean(), torch.tensor(200 / 127.5 - 1), atol=1e-3)
    assert torch.equal(ds[2]["B"], UnpairedImages(a, b, TrainTransform(8, load_size=9), seed=1)[2]["B"])
    with pytest.raises(ImageError, match="domain B: no images found"):
        UnpairedImages(a, _folder(tmp_path / "empty", 0, 0), EvalTransform(8))


def test_paired_side_by_side_uses_one_crop_for_both_halves(tmp_path):
    half = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    (tmp_path / "p").mkdir()
    Image.fromarray(np.concatenate([half, half], axis=1)).save(tmp_path / "p" / "x.png")
    ds = PairedImages(tmp_path / "p", transform=TrainTransform(16, load_size=20))
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[0]
        assert torch.equal(item["A"], item["B"])


def test_labelled_images(tmp_path):
    _folder(tmp_path / "cats", 2, 10)
    _folder(tmp_path / "dogs", 3, 20)
    ds = LabelledImages(tmp_path, EvalTransform(4))
    assert ds.classes == ["cats", "dogs"] and len(ds) == 5
    assert [ds[i]["label"] for i in range(5)] == [0, 0, 1, 1, 1]


def test_demo_digits():
    d = demo.digits()
    assert d.channels == 1 and d.size == 32 and d.flip is False
    assert len(d.styles) >= 4 and "handwritten" in d.styles           # + >= 3 font families
    for s in d.train_a[:20] + d.train_b[:20]:
        assert s.image.size == (32, 32) and s.image.mode == "L"
    assert {s.label for s in d.train_a} == set(range(10)) == {s.label for s in d.train_b}
    assert {s.style for s in d.train_a} == {"handwritten"}
    assert len(d.test_a) > 300 and len(d.test_b) > 300
    # ink is bright on a dark ground in both domains
    for s in (d.train_a[0], d.train_b[0]):
        a = np.asarray(s.image)
        assert a.max() > 200 and np.median(a) < 60
    # deterministic: the cached set equals a fresh build
    fresh = demo.digits.__wrapped__()
    assert np.array_equal(np.asarray(fresh.train_b[123].image), np.asarray(d.train_b[123].image))
    views = LabelledImages(samples=d.domains(), classes=d.styles, transform=EvalTransform(32))
    assert views[0]["image"].shape == (1, 32, 32)


def test_demo_photos():
    p = demo.photos()
    assert p.channels == 3 and p.flip and p.train_a[0].image.size == (64, 64)
    assert {s.style for s in p.train_a} == {"china"} and {s.style for s in p.train_b} == {"flower"}


def test_data_export_cli(tmp_path, capsys):
    assert cli_main(["data", "export", "digits", str(tmp_path / "d")]) == 0
    root = tmp_path / "d"
    d = demo.digits()
    assert len(list((root / "trainA").glob("*.png"))) == len(d.train_a)
    assert len(list((root / "testB").glob("*.png"))) == len(d.test_b)
    assert sorted(p.name for p in (root / "labelled").iterdir()) == [str(k) for k in range(10)]
    assert sorted(p.name for p in (root / "domains").iterdir()) == d.styles
    again = UnpairedImages(root / "trainA", root / "trainB", EvalTransform(32))
    assert again.channels == 1
    assert "wrote digits" in capsys.readouterr().out


def test_unreadable_images_raise_by_default_and_are_skipped_on_request(tmp_path, capsys):
    a, b = _folder(tmp_path / "A", 3, 200), _folder(tmp_path / "B", 2, 50)
    bad = a / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = UnpairedImages(a, b, EvalTransform(8))
    assert ds[0]["A"].shape == (3, 8, 8)
    with pytest.raises(ImageError, match=r"1\.png: cannot read image"):
        ds[1]

    skip = UnpairedImages(a, b, EvalTransform(8), skip_bad_images=True)
    items = [skip[i] for i in range(len(skip))] + [skip[1], skip[-2]]
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(bad) in err, err      # once per path
    assert "skipping an unreadable image" in err
    # the bad item is replaced by the next index's, the same every time
    assert torch.equal(items[1]["A"], items[2]["A"]) and torch.equal(items[1]["B"], items[2]["B"])
    assert torch.equal(items[0]["A"], ds[0]["A"]) and torch.equal(items[3]["A"], items[2]["A"])
    with pytest.raises(IndexError):
        skip[3]

    # labelled (the same base class): the last item wraps around to the first
    cls = tmp_path / "L"
    _folder(cls / "x", 2, 10)
    (cls / "x" / "9.png").write_bytes(b"garbage")
    lab = LabelledImages(cls, EvalTransform(4), skip_bad_images=True)
    assert len(lab) == 3 and torch.equal(lab[2]["image"], lab[0]["image"])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(cls / "x" / "9.png") in err, err

    # nothing readable left: an ImageError, still naming a path
    for p in (cls / "x").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(ImageError, match=r"no readable image left: all 3 items .*\.png"):
        LabelledImages(cls, EvalTransform(4), skip_bad_images=True)[0]


def test_train_fraction_keeps_a_share_of_each_domain_and_class(tmp_path):
    from pyganx import registry
    from pyganx.data import DataSource, build_dataset
    from pyganx.errors import UsageError
    cyclegan, cgan = registry.get("cyclegan"), registry.get("cgan")
    full = build_dataset(cyclegan, DataSource(demo="digits"))
    tenth = build_dataset(cyclegan, DataSource(demo="digits", train_fraction=0.1))
    assert len(tenth.train.a) == round(len(full.train.a) * 0.1) and len(tenth.train.b) == round(len(full.train.b) * 0.1)
    from pyganx.data.folders import spread
    assert tenth.train.a == spread(full.train.a, len(tenth.train.a))     # evenly spread over the domain
    assert len(tenth.test) == len(full.test) and "0.1 of the training images" in tenth.description
    per_class = lambda ds: [sum(1 for _, k in ds.samples if k == c) for c in range(10)]  # noqa: E731
    whole, part = (build_dataset(cgan, DataSource(demo="digits", train_fraction=f)).train for f in (1.0, 0.25))
    assert per_class(part) == [max(1, round(n * 0.25)) for n in per_class(whole)]
    with pytest.raises(UsageError, match="--train-fraction must be in"):
        build_dataset(cyclegan, DataSource(demo="digits", train_fraction=0))
