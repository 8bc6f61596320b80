"""The image fetcher against a real HTTP server on loopback."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.errors import RequestError
from backend.images import ImageFetcher, decode_image
from image_server import image_server, png_bytes, sample_image

TOKEN = "secret-token-42"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with no pixel data (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


@pytest.fixture
def served():
    image = sample_image(90, 120)
    files = {"/data/upload/3/cat.png": png_bytes(image), "/data/local-files/?d=pics%2Fcat.png": png_bytes(image),
             "/notes.txt": b"not an image at all", "/bomb.png": png_header_only(40000, 40000)}
    with image_server(files) as ls, image_server({"/public/cat.png?X-Sig=abc": png_bytes(image)}) as other:
        yield image, ls, other


def fetcher_for(ls, tmp_path, **kw):
    return ImageFetcher(ls.url, TOKEN, cache_dir=tmp_path / "cache", **kw)


def test_label_studio_paths_carry_the_token(served, tmp_path):
    image, ls, _ = served
    fetcher = fetcher_for(ls, tmp_path)
    np.testing.assert_array_equal(fetcher.load("/data/upload/3/cat.png"), image)
    np.testing.assert_array_equal(fetcher.load("/data/local-files/?d=pics%2Fcat.png"), image)
    np.testing.assert_array_equal(fetcher.load(ls.url + "/data/upload/3/cat.png"), image)  # absolute, same origin
    assert [h.get("Authorization") for _, h in ls.requests] == [f"Token {TOKEN}"] * 2  # 3rd: memory hit


def test_other_hosts_get_no_token(served, tmp_path):
    image, ls, other = served
    np.testing.assert_array_equal(fetcher_for(ls, tmp_path).load(other.url + "/public/cat.png?X-Sig=abc"), image)
    assert other.requests[0][1].get("Authorization") is None
    assert other.requests[0][0] == "/public/cat.png?X-Sig=abc"


def test_disk_cache_serves_a_new_process_without_a_download(served, tmp_path):
    image, ls, _ = served
    fetcher_for(ls, tmp_path).load("/data/upload/3/cat.png")
    np.testing.assert_array_equal(fetcher_for(ls, tmp_path).load("/data/upload/3/cat.png"), image)
    assert ls.paths() == ["/data/upload/3/cat.png"]


def test_disk_cache_is_capped(tmp_path):
    files = {f"/img{i}.png": png_bytes(sample_image(60, 80, seed=i)) for i in range(6)}
    size = max(len(b) for b in files.values())
    with image_server(files) as srv:
        fetcher = ImageFetcher(srv.url, cache_dir=tmp_path / "c", cache_max_bytes=int(2.5 * size), memory_items=0)
        for path in files:
            fetcher.load(path)
        stored = list((tmp_path / "c").iterdir())
        assert 1 <= len(stored) <= 2 and sum(p.stat().st_size for p in stored) <= 2.5 * size
        fetcher.load("/img5.png")  # the newest is still cached
        assert srv.paths().count("/img5.png") == 1


@pytest.mark.parametrize("reference,status,words", [
    ("/data/upload/3/missing.png", 422, "HTTP 404"),
    ("/notes.txt", 422, "not return an image"),
    ("/bomb.png", 422, "over the limit"),
    ("ftp://example.org/x.png", 422, "only http"),
    ("", 422, "URL string"),
])
def test_bad_images_are_refused(served, tmp_path, reference, status, words):
    _, ls, _ = served
    with pytest.raises(RequestError) as err:
        fetcher_for(ls, tmp_path, max_pixels=10_000_000).load(reference)
    assert err.value.status == status and words in err.value.message
    assert not list((tmp_path / "cache").glob("*")) or reference == "/data/upload/3/missing.png"


def test_relative_paths_need_label_studio_url(tmp_path):
    with pytest.raises(RequestError) as err:
        ImageFetcher(None).load("/data/upload/1/a.png")
    assert err.value.status == 422 and "LABEL_STUDIO_URL" in err.value.message


def test_a_slow_host_times_out(served, tmp_path):
    _, ls, _ = served
    ls.delay = 3.0
    with pytest.raises(RequestError) as err:
        fetcher_for(ls, tmp_path, timeout=0.5).load("/data/upload/3/cat.png")
    assert err.value.status == 504


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(RequestError) as err:
        decode_image(png_header_only(5000, 5000), max_pixels=24_999_999)
    assert "25000000 pixels" in err.value.message


@pytest.mark.parametrize("orientation,shape", [(1, (90, 120)), (6, (120, 90)), (8, (120, 90)), (3, (90, 120))])
def test_exif_orientation_is_applied(orientation, shape):
    image = sample_image(90, 120)
    image[:10, :10] = 255  # a white top-left corner to follow
    decoded = decode_image(jpeg_with_orientation(image, orientation), 10**8)
    assert decoded.shape == (*shape, 3)
    corner = {1: (0, 0), 6: (0, -1), 8: (-1, 0), 3: (-1, -1)}[orientation]
    assert decoded[corner].min() > 200


def test_any_pixel_format_becomes_rgb():
    gray16 = (np.arange(90 * 120, dtype=np.uint16).reshape(90, 120) * 7)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    out = decode_image(buf.getvalue(), 10**8)
    assert out.shape == (90, 120, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], (gray16 >> 8).astype(np.uint8))
    rgba = np.dstack([sample_image(20, 30), np.full((20, 30), 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(png_bytes(rgba), 10**8), rgba[:, :, :3])
