"""The one preprocessing function: modes, limits, and its agreement with a plain reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from plantdx.exceptions import PreprocessError
from plantdx.preprocessing import PreprocessMeta, Preprocessor, open_image

from helpers.serving import png_header_only

META = PreprocessMeta(image_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_matches_a_plain_reference() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    data = encode(Image.fromarray(arr))
    out = Preprocessor(META)(data)
    ref = np.asarray(Image.fromarray(arr).resize((64, 64), Image.Resampling.BILINEAR), np.float32)
    ref = ((ref / 255.0 - np.array(META.mean)) / np.array(META.std)).transpose(2, 0, 1)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    img = Image.new("RGB", (50, 40), (200, 100, 50)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.fromarray((np.full((40, 50), 40000)).astype(np.uint16))
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = open_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (50, 40)
    if mode == "I;16":
        assert 150 < np.asarray(out).mean() < 160  # 40000/65535 of full scale, not clipped to 255


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert np.asarray(open_image(encode(img))).min() == 255


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 40), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 30, 40))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (40, 60)
    arr = np.asarray(out).mean(axis=(1, 2))
    assert arr[:25].mean() > 200 and arr[-25:].mean() < 50  # white half is now on top


def test_draft_decoding_is_used_for_large_jpegs_and_stays_close() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((512, 512), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=95)
    fast = Preprocessor(META)(data)
    slow_img = (
        Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    )
    slow = Preprocessor(META)(slow_img)
    assert np.abs(fast - slow).mean() < 0.1  # same picture, decoded at 1/4 scale


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"<html><body>hello</body></html>", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "not_an_image"),
    ],
)
def test_rejections(data: bytes, reason: str) -> None:
    with pytest.raises(PreprocessError) as err:
        Preprocessor(META)(data)
    assert err.value.reason == reason


def test_limits() -> None:
    tiny = encode(Image.new("RGB", (20, 100)))
    with pytest.raises(PreprocessError) as err:
        open_image(tiny)
    assert err.value.reason == "too_small"
    full = encode(Image.new("RGB", (200, 200), (10, 200, 10)), "JPEG")
    with pytest.raises(PreprocessError) as err:
        open_image(full[: len(full) // 2])
    assert err.value.reason == "truncated"
    with pytest.raises(PreprocessError) as err:
        open_image(b"\xff" * (21 * 1024 * 1024))
    assert err.value.reason == "too_large"
    # A PNG header that announces 10000 x 10000 pixels: refused before decoding.
    bomb = png_header_only(10000, 10000)
    with pytest.raises(PreprocessError) as err:
        open_image(bomb)
    assert err.value.reason == "too_many_pixels"


def test_meta_round_trip(tmp_path) -> None:
    META.save(tmp_path / "p.json")
    assert PreprocessMeta.load(tmp_path / "p.json") == META
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessMeta(interpolation="magic")


def test_vectorised_normaliser_is_bit_identical_to_the_plain_formula() -> None:
    from plantdx.preprocessing import Normalizer

    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (5, 64, 48, 3), dtype=np.uint8)
    norm = Normalizer(META)
    plain = np.stack(
        [
            np.ascontiguousarray(
                (x.astype(np.float32) * norm.scale + norm.offset).transpose(2, 0, 1)
            )
            for x in batch
        ]
    )
    assert np.array_equal(norm.batch(batch), plain)
    assert np.array_equal(norm(batch[2]), plain[2])
    assert norm(batch[2]).flags.c_contiguous and norm(batch[2]).dtype == np.float32


def test_decode_batch_keeps_each_error_with_its_image() -> None:
    good = encode(Image.new("RGB", (80, 60), (10, 200, 30)), "JPEG")
    pre = Preprocessor(META)
    pixels, errors = pre.decode_batch([good, b"", b"<html>", good, good[:300]])
    assert pixels.shape == (5, 64, 64, 3) and pixels.dtype == np.uint8
    assert [e.reason if e else None for e in errors] == [
        None,
        "empty",
        "not_an_image",
        None,
        "truncated",
    ]
    assert pixels[1].max() == 0 and pixels[0].mean() > 50
    assert np.array_equal(pre.normalize.batch(pixels)[3], pre(good))
    with pytest.raises(PreprocessError, match="empty"):
        pre.batch([good, b""])


def test_batch_equals_one_at_a_time_on_real_photos(mini_photos) -> None:
    images = [p.read_bytes() for p in mini_photos[:8]]
    pre = Preprocessor(PreprocessMeta(image_size=224))
    assert np.array_equal(pre.batch(images), np.stack([pre(b) for b in images]))


def test_exif_orientation_survives_draft_decoding() -> None:
    """A big rotated JPEG goes through draft decoding and still comes out upright."""
    img = Image.new("RGB", (600, 400), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 300, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), draft_size=64)
    assert out.size[0] < out.size[1] and out.size[1] < 400  # upright and drafted
    arr = np.asarray(out).mean(axis=(1, 2))
    assert arr[: len(arr) // 3].mean() > 200 and arr[-len(arr) // 3 :].mean() < 50


def test_warmup_sample_is_a_real_photo_in_tritons_string_format() -> None:
    import struct

    from plantdx.model_repository.config import warmup_sample

    data = warmup_sample()
    (length,) = struct.unpack("<I", data[:4])
    assert length == len(data) - 4
    assert data[4:6] == b"\xff\xd8"  # a JPEG
    pixels = Preprocessor(META)(data[4:])
    assert pixels.shape == (3, 64, 64) and np.isfinite(pixels).all()
    assert data == warmup_sample()  # the same bytes every export


def test_bomb_between_one_and_two_times_the_limit_is_refused_by_its_reason() -> None:
    """Pillow only warns below twice its limit; that must still be too_many_pixels."""
    data = png_header_only(8000, 6000)
    with pytest.raises(PreprocessError) as err:
        open_image(data)
    assert err.value.reason == "too_many_pixels"
