"""Tests for advx.engine.images, files and dataset: loading, atomic writes, discovery."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from advx.engine import images as aimages
from advx.engine.errors import DatasetError
from advx.engine.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    LoadedImage,
    decode_image_bytes,
    encode_image,
    load_image,
    save_image_atomic,
)
from advx.engine.rows import Row
from advx.engine.tasks.labels.dataset import discover
from advx.export import files as afiles
from advx.export.files import write_text_atomic

# --------------------------------------------------------------------------- helpers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _check(img: LoadedImage, w: int, h: int) -> None:
    assert isinstance(img, LoadedImage)
    assert img.pixels.dtype == np.uint8
    assert img.pixels.shape == (h, w, 3)
    assert img.pixels.flags["C_CONTIGUOUS"]


def _rgb(h: int = 8, w: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _no_tmp(directory: Path) -> None:
    leftovers = [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


# --------------------------------------------------------------------------- load: errors


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty file \(0 bytes\)") as ei:
        load_image(p)
    assert ei.value.reason == "empty file (0 bytes)"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path / "dir.png")


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif")])
def test_truncated_files(tmp_path: Path, fmt: str, ext: str) -> None:
    src = tmp_path / f"full{ext}"
    Image.fromarray(_rgb(64, 64)).save(src, format=fmt)
    data = src.read_bytes()
    bad = tmp_path / f"cut{ext}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt image"):
        load_image(bad)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_signature_only_is_corrupt_not_unknown(tmp_path: Path) -> None:
    p = tmp_path / "head.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ImageLoadError, match="truncated or corrupt image: PNG signature"):
        load_image(p)


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "fake.jpg"
    p.write_text("<html>not really a jpeg</html>")
    with pytest.raises(ImageLoadError) as ei:
        load_image(p)
    assert str(ei.value) == "not an image (extension .jpg, content not recognised)"


def test_corrupt_png_data(tmp_path: Path) -> None:
    good = _raw_png(4, 4, 8, 2, b"".join(b"\x00" + bytes(12) for _ in range(4)))
    idat = good.index(b"IDAT")
    bad = bytearray(good)
    bad[idat + 6 : idat + 10] = b"\xde\xad\xbe\xef"  # corrupt the zlib stream (and CRC)
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(bad))
    with pytest.raises(ImageLoadError, match="truncated or corrupt image"):
        load_image(p)


def test_bomb_refused_by_max_pixels_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "big.png"
    Image.new("RGB", (100, 50)).save(p)

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("decoded a refused image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    with pytest.raises(ImageLoadError) as ei:
        load_image(p, max_pixels=4999)
    assert str(ei.value) == "decompression bomb: 100x50 pixels exceeds the limit of 4999"


@pytest.mark.parametrize("side", [10_000, 20_000, 100_000])
def test_bomb_crafted_header(tmp_path: Path, side: int) -> None:
    # Header claims side x side pixels; the data is a single tiny row. 10k^2 trips
    # Pillow's warning (must not escape), 100k^2 Pillow's own hard error.
    limit = Image.MAX_IMAGE_PIXELS
    p = tmp_path / "bomb.png"
    p.write_bytes(_raw_png(side, side, 8, 0, b"\x00" * 16))
    with pytest.raises(ImageLoadError, match=r"^decompression bomb: "):
        load_image(p)
    assert limit == Image.MAX_IMAGE_PIXELS


def test_decode_bytes_errors() -> None:
    with pytest.raises(ImageLoadError, match="empty file"):
        decode_image_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"^not an image \(content not recognised\)$"):
        decode_image_bytes(b"hello world, definitely not pixels")


# --------------------------------------------------------------------------- load: modes


def test_rgb_png_exact_and_no_notes(tmp_path: Path) -> None:
    arr = _rgb()
    p = tmp_path / "ok.png"
    Image.fromarray(arr).save(p)
    img = load_image(p)
    _check(img, 12, 8)
    assert np.array_equal(img.pixels, arr)
    assert img.notes == ()


def test_16bit_gray_png_exact(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 5000, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(values).save(p)
    img = load_image(p)
    _check(img, 5, 1)
    assert img.pixels[0, :, 0].tolist() == [0, 0, 1, 19, 255]
    assert np.array_equal(img.pixels[..., 0], img.pixels[..., 2])
    assert img.notes == ("16-bit image reduced to 8 bits", "grayscale expanded to RGB")


def test_16bit_big_endian_array_and_int32() -> None:
    be = Image.new("I;16B", (3, 1), 0x1234)
    notes: list[str] = []
    rgb = aimages._to_rgb(be, notes)
    assert rgb.shape == (1, 3, 3) and int(rgb[0, 0, 0]) == 0x12
    i32 = Image.fromarray(np.array([[0, 40000, 65535]], dtype=np.int32))
    assert i32.mode == "I"
    notes = []
    assert aimages._to_rgb(i32, notes)[0, :, 1].tolist() == [0, 156, 255]
    assert notes[0] == "16-bit image reduced to 8 bits"
    wide = Image.fromarray(np.array([[-55, 0, 200]], dtype=np.int32))
    notes = []
    assert aimages._to_rgb(wide, notes)[0, :, 0].tolist() == [0, 55, 255]
    assert notes[0] == "32-bit integer image rescaled from [-55, 200] to 8 bits"


def test_16bit_rgb_png(tmp_path: Path) -> None:
    row = b"\x00" + np.array([[0x1234, 0xABCD, 0xFFFF] * 2], dtype=">u2").tobytes()
    p = tmp_path / "rgb16.png"
    p.write_bytes(_raw_png(2, 2, 16, 2, row * 2))
    img = load_image(p)
    _check(img, 2, 2)
    assert img.pixels[1, 1].tolist() == [0x12, 0xAB, 0xFF]
    assert img.notes == ("16-bit image reduced to 8 bits",)


def test_16bit_gray_alpha_png(tmp_path: Path) -> None:
    # 16-bit LA: gray 0x6400 (-> 100), alpha 0x8000 (-> 128) composited on white
    row = b"\x00" + np.array([[0x6400, 0x8000, 0x6400, 0xFFFF]], dtype=">u2").tobytes()
    p = tmp_path / "la16.png"
    p.write_bytes(_raw_png(2, 1, 16, 4, row))
    img = load_image(p)
    _check(img, 2, 1)
    assert img.pixels[0].tolist() == [[177, 177, 177], [100, 100, 100]]
    assert img.notes == ("16-bit image reduced to 8 bits", "alpha channel composited on white")


def test_16bit_gray_tiff(tmp_path: Path) -> None:
    p = tmp_path / "g16.tif"
    Image.fromarray(np.array([[0x0102, 0xFEDC]], dtype=np.uint16)).save(p)
    img = load_image(p)
    assert img.pixels[0, :, 0].tolist() == [0x01, 0xFE]
    assert img.notes[0] == "16-bit image reduced to 8 bits"


@pytest.mark.parametrize(
    "values,expected,note",
    [
        ([0.0, 0.5, 1.0], [0, 128, 255], "float image scaled from [0, 1] to 8 bits"),
        ([0.0, 100.4, 255.0], [0, 100, 255], "float image rounded to 8 bits"),
        ([-10.0, 0.0, 10.0], [0, 128, 255], "float image rescaled from [-10, 10] to 8 bits"),
    ],
)
def test_float_tiff(tmp_path: Path, values: list[float], expected: list[int], note: str) -> None:
    p = tmp_path / "f.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(p)
    img = load_image(p)
    _check(img, 3, 1)
    assert img.pixels[0, :, 0].tolist() == expected
    assert img.notes == (note, "grayscale expanded to RGB")


def test_float_non_finite() -> None:
    notes: list[str] = []
    im = Image.fromarray(np.array([[np.nan, 0.25, np.inf]], dtype=np.float32))
    assert aimages._to_rgb(im, notes)[0, :, 0].tolist() == [0, 64, 0]
    assert notes[0] == "non-finite float values set to 0"


def test_palette_without_and_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 2), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 0] + [0] * 759)
    pal.putpixel((0, 0), 2)
    p = tmp_path / "pal.png"
    pal.save(p)
    img = load_image(p)
    _check(img, 4, 2)
    assert img.pixels[1, 1].tolist() == [10, 20, 30]
    assert img.pixels[0, 0].tolist() == [200, 100, 0]
    assert img.notes == ("palette image converted to RGB",)

    q = tmp_path / "pal_t.png"
    pal.save(q, transparency=1)
    img = load_image(q)
    assert img.pixels[1, 1].tolist() == [255, 255, 255]
    assert img.pixels[0, 0].tolist() == [200, 100, 0]
    assert img.notes == ("palette image converted to RGB", "alpha channel composited on white")


def test_cmyk(tmp_path: Path) -> None:
    p = tmp_path / "c.tif"
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(p)
    img = load_image(p)
    _check(img, 3, 2)
    assert img.pixels[0, 0].tolist() == [255, 0, 0]
    assert img.notes == ("CMYK converted to RGB",)
    j = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(j)
    img = load_image(j)
    _check(img, 8, 8)
    assert img.notes == ("CMYK converted to RGB",)


def test_grayscale_la_and_1bit(tmp_path: Path) -> None:
    gray = np.array([[0, 7, 128, 255]], dtype=np.uint8)
    p = tmp_path / "l.png"
    Image.fromarray(gray).save(p)
    img = load_image(p)
    _check(img, 4, 1)
    assert np.array_equal(img.pixels, np.repeat(gray[..., None], 3, axis=2))
    assert img.notes == ("grayscale expanded to RGB",)

    la = Image.fromarray(np.array([[[100, 0], [100, 255], [100, 128]]], dtype=np.uint8), "LA")
    q = tmp_path / "la.png"
    la.save(q)
    img = load_image(q)
    assert img.pixels[0, :, 0].tolist() == [255, 100, 177]
    assert img.notes == ("grayscale expanded to RGB", "alpha channel composited on white")

    bw = Image.new("1", (3, 1), 0)
    bw.putpixel((1, 0), 1)
    r = tmp_path / "bw.bmp"
    bw.save(r)
    img = load_image(r)
    assert img.pixels[0, :, 1].tolist() == [0, 255, 0]
    assert img.notes == ("1-bit image expanded to RGB",)


def test_rgba_composited_on_white_exact(tmp_path: Path) -> None:
    rgba = np.array(
        [[[200, 100, 0, 128], [10, 20, 30, 0], [10, 20, 30, 255], [255, 0, 255, 1]]],
        dtype=np.uint8,
    )
    p = tmp_path / "a.png"
    Image.fromarray(rgba).save(p)
    img = load_image(p)
    _check(img, 4, 1)
    expected = [[227, 177, 127], [255, 255, 255], [10, 20, 30], [255, 254, 255]]
    assert img.pixels[0].tolist() == expected
    assert img.notes == ("alpha channel composited on white",)


def test_exif_orientation_6(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored left half red
    arr[:, 20:] = (0, 0, 255)  # stored right half blue
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    img = load_image(p)
    _check(img, 20, 40)  # rotated 90 degrees: W,H swapped
    assert "EXIF orientation 6 applied" in img.notes
    top, bottom = img.pixels[5, 10].astype(int), img.pixels[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # stored left -> displayed top
    assert bottom[2] > 200 and bottom[0] < 60


def _frames(mode: str, n: int) -> list[Image.Image]:
    return [Image.new(mode, (6, 4), (40 * i, 255 - 40 * i, 10)) for i in range(n)]


@pytest.mark.parametrize("ext,kwargs", [(".gif", {}), (".webp", {"lossless": True}), (".png", {})])
def test_animated_first_frame(tmp_path: Path, ext: str, kwargs: dict[str, object]) -> None:
    frames = _frames("RGB", 5)
    p = tmp_path / f"anim{ext}"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=40, **kwargs)
    img = load_image(p)
    _check(img, 6, 4)
    assert img.notes[0] == "animated (5 frames): first frame used"
    assert img.pixels[2, 3].tolist() == [0, 255, 10]


def test_unicode_space_name_and_wrong_extension(tmp_path: Path) -> None:
    d = tmp_path / "zebra crossing"
    d.mkdir()
    arr = _rgb(5, 7)
    p = d / "ümlaut 写真 1.jpg"  # PNG content behind a .jpg name
    Image.fromarray(arr).save(p, format="PNG")
    img = load_image(str(p))
    _check(img, 7, 5)
    assert np.array_equal(img.pixels, arr)


def test_catch_all_pil_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "ok.png"
    Image.new("RGB", (2, 2)).save(p)

    def weird(*_a: object, **_k: object) -> None:
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageFile.ImageFile, "load", weird)
    with pytest.raises(ImageLoadError, match="truncated or corrupt image: unpack requires"):
        load_image(p)


# --------------------------------------------------------------------------- writing


def test_save_png_atomic_round_trip(tmp_path: Path) -> None:
    arr = _rgb(9, 11, seed=3)
    out = tmp_path / "a" / "b c" / "ü.png"
    save_image_atomic(out, arr)
    assert np.array_equal(load_image(out).pixels, arr)
    _no_tmp(tmp_path)
    save_image_atomic(out, arr[::-1].copy())  # overwrite in place
    assert np.array_equal(load_image(out).pixels, arr[::-1])
    assert sorted(p.name for p in out.parent.iterdir()) == ["ü.png"]


def test_save_jpeg_quality_and_444(tmp_path: Path) -> None:
    arr = _rgb(32, 32, seed=4)
    hi, lo = tmp_path / "hi.jpg", tmp_path / "lo.jpg"
    save_image_atomic(hi, arr, fmt="jpeg", quality=95)
    save_image_atomic(lo, arr, fmt="jpeg", quality=30)
    assert lo.stat().st_size < hi.stat().st_size
    with Image.open(hi) as im:
        assert im.format == "JPEG"
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
    _no_tmp(tmp_path)


def test_encode_decode_bytes() -> None:
    arr = _rgb(16, 16, seed=5)
    assert np.array_equal(decode_image_bytes(encode_image(arr, "png")), arr)
    jpg = decode_image_bytes(encode_image(arr, "jpeg", 90))
    assert jpg.shape == arr.shape and jpg.dtype == np.uint8
    with pytest.raises(ValueError, match="unsupported output format"):
        encode_image(arr, "gif")
    with pytest.raises(ValueError, match="quality"):
        encode_image(arr, "jpeg", 0)
    with pytest.raises(ValueError, match="HxWx3"):
        encode_image(arr[..., :2].copy(), "png")
    with pytest.raises(ValueError, match="uint8"):
        encode_image(arr.astype(np.float32), "png")


def test_failing_replace_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "x.png"
    out.write_bytes(b"old")

    def fail(*_a: object, **_k: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(afiles.os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        save_image_atomic(out, _rgb())
    assert out.read_bytes() == b"old"
    new = tmp_path / "new.png"
    with pytest.raises(OSError):
        write_text_atomic(new, "hello")
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_failing_fsync_and_bad_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        save_image_atomic(tmp_path / "bad.png", np.zeros((4, 4), dtype=np.uint8))
    assert not (tmp_path / "bad.png").exists()

    def fail(_fd: int) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr(afiles.os, "fsync", fail)
    with pytest.raises(OSError, match="fsync failed"):
        save_image_atomic(tmp_path / "y.png", _rgb())
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "report.json"
    write_text_atomic(out, '{"ok": "ünïcode"}\n')
    write_text_atomic(out, '{"ok": "second"}\n')
    assert out.read_text(encoding="utf-8") == '{"ok": "second"}\n'
    _no_tmp(tmp_path)
    mode = out.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


# --------------------------------------------------------------------------- discovery


def _touch_img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="PNG")


def _tree(root: Path) -> None:
    _touch_img(root / "traffic_light" / "001.png")
    _touch_img(root / "cat" / "sub" / "b.JPG")
    _touch_img(root / "cat" / "a.webp")
    _touch_img(root / "cat" / ".hidden.png")
    _touch_img(root / ".git" / "x.png")
    _touch_img(root / "cat" / ".cache" / "y.png")
    _touch_img(root / "zebra crossing" / "ü 写真.tiff")
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / "cat" / "broken.jpg").write_bytes(b"")  # listed; load_image reports it later
    (root / "README.md").write_text("ignored")


def test_discover_folders(tmp_path: Path) -> None:
    _tree(tmp_path)
    # from the folder layout: no CSV line, no problem, no notes
    assert discover(tmp_path) == [
        Row("cat/a.webp", "cat"),
        Row("cat/broken.jpg", "cat"),
        Row("cat/sub/b.JPG", "cat"),
        Row("traffic_light/001.png", "traffic light"),
        Row("zebra crossing/ü 写真.tiff", "zebra crossing"),
    ]
    assert all(r.line == 0 and r.problem is None and r.notes == () for r in discover(tmp_path))
    assert ".tiff" in IMAGE_EXTENSIONS


def test_discover_root_level_image_and_empty(tmp_path: Path) -> None:
    _tree(tmp_path)
    _touch_img(tmp_path / "loose.png")
    with pytest.raises(DatasetError, match="--labels") as ei:
        discover(tmp_path)
    assert "loose.png" in str(ei.value) and "sub-folders" in str(ei.value)
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        discover(empty)
    with pytest.raises(DatasetError, match="input folder not found"):
        discover(tmp_path / "missing")


def test_discover_csv_ok(tmp_path: Path) -> None:
    _tree(tmp_path)
    _touch_img(tmp_path / "root level.png")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,label\n"
        "traffic_light/001.png,  traffic_light \n"
        "\n"
        '"root level.png","bus, red"\n'
        "./cat//a.webp,cat\n",
        encoding="utf-8-sig",
    )
    assert discover(tmp_path, csv_path) == [  # each with its line in the CSV
        Row("cat/a.webp", "cat", 5),
        Row("root level.png", "bus, red", 4),
        Row("traffic_light/001.png", "traffic_light", 2),
    ]


@pytest.mark.parametrize(
    "body,message",
    [
        ("", "labels.csv: empty file, expected a header row 'path,label'"),
        ("cat/a.webp,cat\n", "labels.csv line 1: expected header 'path,label'"),
        ("file,class\ncat/a.webp,cat\n", "labels.csv line 1: expected header"),
        ("path,label\ncat/a.webp,cat\n\nbus/003.jpg,bus\n",
         "labels.csv line 4: file 'bus/003.jpg' not found under "),
        ("path,label\ncat/a.webp,cat,extra\n", "labels.csv line 2: expected 2 fields"),
        ("path,label\ncat/a.webp\n", "labels.csv line 2: expected 2 fields (path,label), got 1"),
        ("path,label\ncat/a.webp,cat\n ,cat\n", "labels.csv line 3: empty path"),
        ("path,label\ncat/a.webp, \n", "labels.csv line 2: empty label"),
        ("path,label\n../out.png,x\n", "labels.csv line 2: path '../out.png' points outside"),
        ("path,label\n/etc/passwd,x\n", "labels.csv line 2: path '/etc/passwd' must be relative"),
        ("path,label\ncat/a.webp,cat\ncat/./a.webp,dog\n",
         "labels.csv line 3: duplicate path 'cat/a.webp' (first listed on line 2)"),
        ("path,label\ncat,x\n", "labels.csv line 2: file 'cat' not found under "),
        ("path,label\n", "labels.csv: no entries after the header"),
    ],
)
def test_discover_csv_errors(tmp_path: Path, body: str, message: str) -> None:
    _tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(body, encoding="utf-8")
    with pytest.raises(DatasetError) as ei:
        discover(tmp_path, csv_path)
    assert message in str(ei.value)
    if "not found under" in message:
        assert str(ei.value).endswith(f"not found under {tmp_path}")


def test_discover_csv_unreadable(tmp_path: Path) -> None:
    _tree(tmp_path)
    bad = tmp_path / "labels.csv"
    bad.write_bytes(b"path,label\ncat/a.webp,\xff\xfe\n")
    with pytest.raises(DatasetError, match="not valid UTF-8"):
        discover(tmp_path, bad)
    with pytest.raises(DatasetError, match="cannot read labels file"):
        discover(tmp_path, tmp_path / "missing.csv")
    assert issubclass(DatasetError, ValueError)
