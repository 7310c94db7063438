"""Loading any photo: modes, orientation, and bad files answered with the right reason."""
import io

import numpy as np
import pytest
from PIL import Image

from tasks.errors import Reject
from tasks.images import list_inputs, load_rgb


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def photo(astronaut):
    return Image.fromarray(astronaut)


def test_modes_all_become_rgb(tmp_path, photo):
    grey = _save(photo.convert("L"), tmp_path / "grey.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(200)
    rgba = _save(rgba, tmp_path / "rgba.png")
    sixteen = _save(Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257)), tmp_path / "16.png")
    cmyk = _save(photo.convert("CMYK"), tmp_path / "cmyk.jpg")
    for path in (grey, rgba, sixteen, cmyk):
        arr = load_rgb(path)
        assert arr.shape == (512, 512, 3) and arr.dtype == np.uint8, path
    # 16-bit scaled down, not clipped: the grey levels survive
    g16 = load_rgb(sixteen)[..., 0]
    g8 = np.asarray(photo.convert("L"))
    assert np.abs(g16.astype(int) - g8).max() <= 1


def test_exif_orientation_is_applied(tmp_path, astronaut):
    img = Image.fromarray(astronaut[:, :400])  # 512 tall, 400 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    arr = load_rgb(path)
    assert arr.shape == (400, 512, 3)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.jpg", b"", "empty"),
        ("text.png", b"hello, I am not a picture\n" * 10, "not-an-image"),
    ],
)
def test_bad_bytes(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(Reject) as err:
        load_rgb(path)
    assert err.value.reason == reason


def test_truncated_is_corrupt(tmp_path, photo):
    buf = io.BytesIO()
    photo.save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(Reject) as err:
        load_rgb(path)
    assert err.value.reason == "corrupt"


def test_tiny_and_huge(tmp_path):
    tiny = _save(Image.new("RGB", (8, 8)), tmp_path / "tiny.png")
    with pytest.raises(Reject) as err:
        load_rgb(tiny)
    assert err.value.reason == "too-small"
    bomb = _save(Image.new("L", (10_000, 6_000)), tmp_path / "bomb.png")  # 60 MP, a few kB on disk
    assert bomb.stat().st_size < 200_000
    with pytest.raises(Reject) as err:
        load_rgb(bomb)
    assert err.value.reason == "too-large"
    assert load_rgb(bomb, max_pixels=70_000_000).shape == (6_000, 10_000, 3)


def test_list_inputs_sorted_and_ignored(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/z.JPG", "a.png", "c.tiff", "notes.txt", "b/x.webp"):
        (tmp_path / name).write_bytes(b"x")
    images, ignored = list_inputs(tmp_path)
    assert images == ["a.png", "b/x.webp", "b/z.JPG", "c.tiff"]
    assert ignored == ["notes.txt"]
