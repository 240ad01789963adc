import warnings

import numpy as np
import png
import pytest
import torch
from PIL import Image

from oftsr.images import list_images, load_image, read_image_metadata, save_image
from oftsr.images.metadata import upright_xmp
from oftsr.images.write import png_add_chunks


def test_rgb8(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img, depth = load_image(tmp_path / "a.png")
    assert img.shape == (1, 3, 5, 7) and depth == 8
    assert torch.allclose(img[0].permute(1, 2, 0), torch.from_numpy(arr).float() / 255)


def test_png16_rgb_keeps_all_bits(tmp_path):
    arr = np.random.default_rng(0).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    with open(tmp_path / "deep.png", "wb") as f:
        png.Writer(6, 4, greyscale=False, bitdepth=16).write(f, arr.reshape(4, 18))
    img, depth = load_image(tmp_path / "deep.png")
    assert depth == 16 and img.shape == (1, 3, 4, 6)
    assert np.abs(img[0].permute(1, 2, 0).numpy() * 65535 - arr).max() < 0.02  # exact up to float rounding


def test_png16_gray_and_round_trip(tmp_path):
    arr = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3001
    with open(tmp_path / "g.png", "wb") as f:
        png.Writer(5, 4, greyscale=True, bitdepth=16).write(f, arr)
    img, depth = load_image(tmp_path / "g.png")
    assert img.shape == (1, 1, 4, 5) and depth == 16
    save_image(img, tmp_path / "out.png", bit_depth=16)
    again, depth2 = load_image(tmp_path / "out.png")
    assert depth2 == 16 and torch.allclose(again, img, atol=1e-6)


def test_rgba_gray_palette(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png")[0].shape == (1, 4, 4, 4)
    Image.fromarray(np.full((4, 4), 77, dtype=np.uint8)).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")[0]
    assert gray.shape == (1, 1, 4, 4) and gray.max().item() == pytest.approx(77 / 255)
    Image.new("LA", (3, 3), (10, 20)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png")[0].shape == (1, 2, 3, 3)  # gray + alpha
    Image.new("P", (3, 3)).save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png")[0].shape == (1, 3, 3, 3)


def test_content_not_name_decides(tmp_path):
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "photo.png", format="JPEG")
    img, _ = load_image(tmp_path / "photo.png")
    assert img.shape == (1, 3, 6, 8) and img[0, 0].mean() > 0.9


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read as an image"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "empty.jpg").write_bytes(b"")  # a copy that never wrote: said as such
    with pytest.raises(ValueError, match=r"^empty.jpg: the file is empty \(0 bytes\); copy or export it again$"):
        load_image(tmp_path / "empty.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_image(tmp_path / "cut.png")


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (8, 4))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg")[0].shape == (1, 3, 8, 4)


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.jpg", "sub/c.webp", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images([tmp_path])] == ["a.jpg", "b.png", "sub/c.webp"]
    with pytest.raises(FileNotFoundError):
        list_images([tmp_path / "missing"])
    # macOS's AppleDouble files and hidden folders are not photographs; a hidden file named is taken
    (tmp_path / ".thumbs").mkdir()
    for name in ["._a.jpg", ".thumbs/t.png", "sub/._c.webp"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images([tmp_path])] == ["a.jpg", "b.png", "sub/c.webp"]
    assert list_images([tmp_path / "._a.jpg"]) == [tmp_path / "._a.jpg"]
    assert len(list_images([tmp_path / ".thumbs"])) == 1  # a hidden folder given by name is searched
    # A linked folder (photographs on another disk) is searched; a link to a folder above is not, which would loop.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "d.tif").write_bytes(b"x")
    (tmp_path / "sub" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "self").symlink_to(tmp_path / "sub", target_is_directory=True)
    assert [p.relative_to(tmp_path).as_posix() for p in list_images([tmp_path / "sub"])] == [
        "sub/c.webp", "sub/linked/d.tif"]
    # Folders that link to each other: each file once, under its own path (it listed 123 names for 3 files);
    # two links to one folder outside: its files once
    loop = tmp_path / "loop"
    for name in ["a/1.png", "a/2.png", "b/3.png", "far/4.png"]:
        (loop / name).parent.mkdir(parents=True, exist_ok=True)
        (loop / name).write_bytes(b"x")
    (loop / "a" / "link_b").symlink_to("../b", target_is_directory=True)
    (loop / "b" / "link_a").symlink_to("../a", target_is_directory=True)
    outside = tmp_path / "outside"
    (loop / "far").rename(outside)
    (loop / "a" / "far1").symlink_to(outside, target_is_directory=True)
    (loop / "b" / "far2").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(loop, target_is_directory=True)
    assert [p.relative_to(loop).as_posix() for p in list_images([loop])] == [
        "a/1.png", "a/2.png", "a/far1/4.png", "b/3.png"]


def test_gray_alpha_stays_gray_alpha(tmp_path):
    la = np.stack([np.full((3, 4), 10, np.uint8), np.full((3, 4), 20, np.uint8)], axis=-1)
    Image.fromarray(la).save(tmp_path / "la.png")
    img, depth = load_image(tmp_path / "la.png")
    assert img.shape == (1, 2, 3, 4) and depth == 8
    assert torch.allclose(img[0, :, 0, 0], torch.tensor([10 / 255, 20 / 255]))
    assert save_image(img, tmp_path / "out.png") == 8
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "LA" and np.array_equal(np.asarray(im), la)
    arr = np.arange(24, dtype=np.uint16).reshape(3, 8) * 2731  # 16-bit gray + alpha
    with open(tmp_path / "la16.png", "wb") as f:
        png.Writer(4, 3, greyscale=True, alpha=True, bitdepth=16).write(f, arr)
    img16, depth16 = load_image(tmp_path / "la16.png")
    assert img16.shape == (1, 2, 3, 4) and depth16 == 16
    assert save_image(img16, tmp_path / "la16_out.png", bit_depth=16) == 16
    again, _ = load_image(tmp_path / "la16_out.png")
    assert torch.allclose(again, img16, atol=1e-6)


def test_16_bit_tif(tmp_path):
    gray = torch.arange(48, dtype=torch.float32).reshape(1, 1, 6, 8) * 1367 / 65535
    assert save_image(gray, tmp_path / "g.tif", bit_depth=16) == 16
    again, depth = load_image(tmp_path / "g.tif")
    assert depth == 16 and torch.allclose(again, gray, atol=0.5 / 65535)
    rgb = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    assert save_image(rgb, tmp_path / "c.tif", bit_depth=16) == 16  # colour too (tifffile)
    assert save_image(rgb, tmp_path / "c.jpg", bit_depth=16) == 8
    assert save_image(rgb, tmp_path / "c.png", bit_depth=16) == 16
    assert load_image(tmp_path / "c.tif")[0].shape == (1, 3, 6, 8)


def test_unknown_output_suffix_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"\.xyz.*png"):
        save_image(torch.rand(3, 4, 4), tmp_path / "a.xyz")
    assert not list(tmp_path.iterdir())


def test_png16_with_fewer_significant_bits(tmp_path):
    # A 12-bit source in a 16-bit PNG (sBIT 12): as bright as the same levels stored at 12 bits.
    levels = np.random.default_rng(0).integers(0, 4096, (6, 8 * 3)).astype(np.uint16)
    with open(tmp_path / "s12.png", "wb") as f:
        png.Writer(8, 6, greyscale=False, bitdepth=12).write(f, levels)
    image, depth = load_image(tmp_path / "s12.png")
    expected = torch.from_numpy(levels.reshape(6, 8, 3).astype(np.float32) / 4095).permute(2, 0, 1)[None]
    assert depth == 16 and torch.allclose(image, expected, atol=1e-6)


def _filtered_png16(levels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of (H, W, 3) `levels` whose rows use each of the five PNG filters in
    turn (None, Sub, Up, Average, Paeth), as libpng's adaptive filtering mixes them in a
    photo editor's file; written here from the PNG specification, not by a library."""
    import struct
    import zlib

    h, w, _ = levels.shape
    raw = levels.astype(">u2").view(np.uint8).reshape(h, w * 6).astype(np.int32)
    bpp = 6  # bytes per pixel: the left neighbour is one pixel back
    left, up, up_left = (np.zeros_like(raw) for _ in range(3))
    left[:, bpp:], up[1:], up_left[1:, bpp:] = raw[:, :-bpp], raw[:-1], raw[:-1, :-bpp]
    p = left + up - up_left
    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    predictors = [np.zeros_like(raw), left, up, (left + up) // 2, paeth]
    kinds = np.arange(h) % 5
    rows = [bytes([k]) + ((raw[y] - predictors[k][y]) % 256).astype(np.uint8).tobytes() for y, k in enumerate(kinds)]
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))


def test_png16_as_photo_editors_write_it(tmp_path):
    # every row filter, Adam7 interlacing, a transparent colour (tRNS): all 16 bits, exactly
    levels = np.random.default_rng(1).integers(0, 65536, (11, 9, 3), dtype=np.uint16)
    (tmp_path / "filtered.png").write_bytes(_filtered_png16(levels))
    with open(tmp_path / "interlaced.png", "wb") as f:
        png.Writer(9, 11, greyscale=False, bitdepth=16, interlace=True).write(f, levels.reshape(11, 27))
    for name in ("filtered.png", "interlaced.png"):
        image, depth = load_image(tmp_path / name)
        assert depth == 16 and image.shape == (1, 3, 11, 9), name
        assert np.abs(image[0].permute(1, 2, 0).numpy() * 65535 - levels).max() < 0.02, name
    levels[2, 3] = (1000, 2000, 3000)
    with open(tmp_path / "trns.png", "wb") as f:
        png.Writer(9, 11, greyscale=False, bitdepth=16, transparent=(1000, 2000, 3000)).write(f, levels.reshape(11, 27))
    image, depth = load_image(tmp_path / "trns.png")
    assert depth == 16 and image.shape == (1, 4, 11, 9)
    assert image[0, 3, 2, 3] == 0 and (image[0, 3] == 0).sum() == 1 and image[0, 3].sum() == 11 * 9 - 1
    assert np.abs(image[0, :3].permute(1, 2, 0).numpy() * 65535 - levels).max() < 0.02
    # cut inside its pixel data: refused, as a truncated 8-bit PNG is
    (tmp_path / "cut.png").write_bytes(_filtered_png16(levels)[:-40])
    with pytest.raises(ValueError, match=r"cut.png: cannot read as an image"):
        load_image(tmp_path / "cut.png")


def test_lzw_tiff16_keeps_all_bits(tmp_path):
    # Photoshop's usual TIFF: 16 bits, LZW with the horizontal predictor (tifffile decodes it with imagecodecs)
    import tifffile

    levels = np.random.default_rng(2).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "lzw.tif", levels, photometric="rgb", compression="lzw", predictor=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "read with 8 bits" fallback
        image, depth = load_image(tmp_path / "lzw.tif")
    assert depth == 16 and np.abs(image[0].permute(1, 2, 0).numpy() * 65535 - levels).max() < 0.02


def test_pngs_are_written_at_comfyuis_compression_level(tmp_path):
    # zlib's header says how hard its stream was packed (FLEVEL, 2 bits): 1 for levels 2-5, 2 for zlib's default 6
    from oftsr.images.write import PNG_COMPRESS_LEVEL

    assert PNG_COMPRESS_LEVEL == 4
    image = torch.rand(3, 16, 24)
    for depth in (8, 16):
        save_image(image, tmp_path / f"o{depth}.png", bit_depth=depth)
        data = (tmp_path / f"o{depth}.png").read_bytes()
        at = data.index(b"IDAT") + 4
        assert data[at] & 0x0F == 8 and data[at + 1] >> 6 == 1, depth  # deflate, FLEVEL 1
        assert load_image(tmp_path / f"o{depth}.png")[1] == depth


def test_a_cut_16_bit_tiff_is_refused_as_truncated_without_codec_advice(tmp_path):
    # as a half-copied result of ours (zlib), Photoshop's (LZW) or an uncompressed one: one message, no "8 bits"
    import tifffile

    levels = np.random.default_rng(3).integers(0, 65536, (40, 30, 3), dtype=np.uint16)
    for compression in ("zlib", "lzw", None):
        tifffile.imwrite(tmp_path / "whole.tif", levels, photometric="rgb", compression=compression)
        data = (tmp_path / "whole.tif").read_bytes()
        (tmp_path / "cut.tif").write_bytes(data[:len(data) * 6 // 10])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"cut.tif: cannot read as an image; it is truncated"):
                load_image(tmp_path / "cut.tif")


def test_an_opaque_animated_webp_reads_as_rgb_and_a_transparent_one_keeps_alpha(tmp_path):
    # Pillow decodes every animated WebP as RGBA
    frame = Image.fromarray(np.random.default_rng(4).integers(0, 256, (6, 8, 3), dtype=np.uint8))
    frame.save(tmp_path / "opaque.webp", save_all=True, append_images=[frame.transpose(0)], lossless=True)
    image, depth = load_image(tmp_path / "opaque.webp")
    assert image.shape == (1, 3, 6, 8) and depth == 8
    assert np.abs(image[0].permute(1, 2, 0).numpy() * 255 - np.asarray(frame)).max() < 0.01  # lossless
    clear = frame.convert("RGBA")
    clear.putpixel((2, 3), (10, 20, 30, 0))
    clear.save(tmp_path / "clear.webp", save_all=True, append_images=[clear.transpose(0)], lossless=True)
    image, _ = load_image(tmp_path / "clear.webp")
    assert image.shape == (1, 4, 6, 8) and image[0, 3, 3, 2] == 0 and image[0, 3].sum() == 6 * 8 - 1


def test_metadata_is_read_and_written(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = Image.new("RGB", (8, 4), (200, 100, 50))
    exif = im.getexif()
    exif[0x0112] = 6  # turned upright on load, so the copy must say 1
    exif[0x010F] = "Camera maker"
    im.save(tmp_path / "in.jpg", icc_profile=icc, exif=exif, dpi=(300, 300))
    meta = read_image_metadata(tmp_path / "in.jpg")
    assert meta["icc_profile"] == icc and meta["dpi"] == pytest.approx((300, 300))
    image = load_image(tmp_path / "in.jpg")[0]
    for suffix in (".png", ".jpg", ".webp", ".tif"):
        save_image(image, tmp_path / f"out{suffix}", metadata=meta)
        with Image.open(tmp_path / f"out{suffix}") as out:
            assert out.info.get("icc_profile") == icc, suffix
            if suffix != ".webp":
                assert out.info["dpi"] == pytest.approx((300, 300), abs=0.01), suffix
            else:  # WebP has no resolution field: EXIF's XResolution, YResolution in inches
                assert (out.getexif()[0x011A], out.getexif()[0x011B], out.getexif()[0x0128]) == (300, 300, 2)
            assert out.getexif()[0x0112] == 1 and out.getexif()[0x010F] == "Camera maker", suffix
    assert read_image_metadata(tmp_path / "out.webp")["dpi"] == pytest.approx((300, 300))  # read back from there
    save_image(image, tmp_path / "bare.webp", metadata={"dpi": (72.0, 96.0)})  # an EXIF block made for it
    assert read_image_metadata(tmp_path / "bare.webp")["dpi"] == pytest.approx((72, 96))
    save_image(image, tmp_path / "out.bmp", metadata=meta)  # BMP holds only the resolution
    with Image.open(tmp_path / "out.bmp") as out:
        assert out.info["dpi"] == pytest.approx((300, 300), abs=0.1) and "icc_profile" not in out.info
    assert save_image(image, tmp_path / "out16.png", bit_depth=16, metadata=meta) == 16
    with Image.open(tmp_path / "out16.png") as out:
        assert out.info.get("icc_profile") == icc  # the 16-bit writer keeps the profile and DPI
        assert out.info["dpi"] == pytest.approx((300, 300), abs=0.1)
    assert torch.equal(load_image(tmp_path / "out16.png")[0], load_image(tmp_path / "out.png")[0])
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert read_image_metadata(tmp_path / "plain.png") == {}
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert read_image_metadata(tmp_path / "bad.png") == {}


def test_metadata_fits_what_is_written(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    # A TIFF's tags are its own layout (size, strips, compression): no EXIF is taken from it,
    # and its copy writes in every format.
    Image.new("RGB", (8, 4), (1, 2, 3)).save(tmp_path / "in.tif", icc_profile=srgb, dpi=(300, 300))
    meta = read_image_metadata(tmp_path / "in.tif")
    assert sorted(meta) == ["dpi", "icc_profile"]
    image = load_image(tmp_path / "in.tif")[0]
    for suffix in (".tif", ".png", ".jpg"):
        save_image(image, tmp_path / f"t{suffix}", metadata=meta)
        with Image.open(tmp_path / f"t{suffix}") as out:
            assert out.size == (8, 4) and out.info.get("icc_profile") == srgb
    # The old pixel size leaves the EXIF; other fields stay.
    im = Image.new("RGB", (8, 4))
    exif = im.getexif()
    exif.get_ifd(0x8769).update({0xA002: 8, 0xA003: 4, 0x829A: (1, 100)})
    im.save(tmp_path / "e.jpg", exif=exif)
    kept = Image.Exif()
    kept.load(read_image_metadata(tmp_path / "e.jpg")["exif"])
    assert dict(kept.get_ifd(0x8769)) == {0x829A: (1, 100)}
    # A profile of another colour space than the written pixels is left out.
    cmyk = bytearray(srgb)
    cmyk[16:20] = b"CMYK"
    gray = bytearray(srgb)
    gray[16:20] = b"GRAY"
    rgb, mono = image, image[:, :1]
    for pixels, profile, suffix, kept_profile in [(rgb, bytes(cmyk), ".png", False), (rgb, bytes(gray), ".jpg", False),
                                                  (mono, bytes(gray), ".png", True), (mono, bytes(gray), ".webp", False),
                                                  (mono, srgb, ".png", False), (rgb, srgb, ".webp", True)]:
        save_image(pixels, tmp_path / f"p{suffix}", metadata={"icc_profile": profile})
        with Image.open(tmp_path / f"p{suffix}") as out:
            assert (out.info.get("icc_profile") == profile) is kept_profile, (profile[16:20], suffix)


def test_metadata_of_tiffs_pillow_cannot_open_is_read_with_tifffile(tmp_path):
    """Float colour and 16-bit gray + alpha TIFFs (Photoshop's 32-bit mode, GIMP's float
    exports) keep their profile, XMP and DPI too."""
    import tifffile
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6" tiff:ImageWidth="8" xmp:Rating="4"/></x:xmpmeta>'
    rgb = np.random.default_rng(0).random((4, 8, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", rgb, photometric="rgb", iccprofile=srgb, resolution=(300, 300),
                     resolutionunit=2, extratags=[(700, 1, len(xmp), xmp, True)])
    tifffile.imwrite(tmp_path / "ga.tif", np.zeros((4, 8, 2), np.uint16), photometric="minisblack",
                     extrasamples=("unassalpha",), resolution=(100, 100), resolutionunit=3)  # per centimetre
    meta = read_image_metadata(tmp_path / "f.tif")
    assert sorted(meta) == ["dpi", "icc_profile", "xmp"] and meta["icc_profile"] == srgb
    assert meta["dpi"] == pytest.approx((300, 300)) and b'tiff:Orientation="1"' in meta["xmp"]
    assert b"ImageWidth" not in meta["xmp"] and b'xmp:Rating="4"' in meta["xmp"]
    assert read_image_metadata(tmp_path / "ga.tif") == {"dpi": pytest.approx((254, 254))}
    save_image(load_image(tmp_path / "f.tif")[0], tmp_path / "out.tif", bit_depth=16, metadata=meta)
    with Image.open(tmp_path / "out.tif") as out:
        assert out.info["icc_profile"] == srgb and out.info["dpi"] == pytest.approx((300, 300))
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    assert read_image_metadata(tmp_path / "junk.tif") == {}


def test_linear_light_is_read_as_display_values_and_written_back_linear(tmp_path):
    """Under a profile with gamma-1 curves the file holds linear light: `load_image` returns
    its sRGB encoding (what the network learned) from every reader, and `save_image`
    decodes again where it writes that profile, so a file goes round unchanged."""
    import png
    import tifffile
    from test_icc import LINEAR, _profile, _rgb

    from oftsr.color import srgb_encode

    rgb_icc, gray_icc = _rgb(LINEAR["gamma 1.0"]), _profile(b"GRAY", {b"kTRC": LINEAR["identity curv"]})
    rng = np.random.default_rng(0)
    levels8 = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    levels16 = rng.integers(0, 65536, (6, 10, 3), dtype=np.uint16)
    floats = rng.random((6, 10, 3), dtype=np.float32)
    Image.fromarray(levels8).save(tmp_path / "8.png", icc_profile=rgb_icc)
    Image.fromarray(levels8[..., 0]).save(tmp_path / "gray.png", icc_profile=gray_icc)
    with open(tmp_path / "16.png", "wb") as f:
        png.Writer(10, 6, greyscale=False, bitdepth=16).write(f, levels16.reshape(6, 30))
    png_add_chunks(tmp_path / "16.png", rgb_icc, None, None)
    tifffile.imwrite(tmp_path / "f.tif", floats, photometric="rgb", iccprofile=rgb_icc)
    for name, values, tol in (("8.png", levels8 / 255, 1e-6), ("gray.png", levels8[..., :1] / 255, 1e-6),
                              ("16.png", levels16 / 65535, 1e-6), ("f.tif", floats, 1e-6)):
        image, _ = load_image(tmp_path / name)
        linear = torch.from_numpy(np.asarray(values, dtype=np.float32)).permute(2, 0, 1)[None]
        assert torch.allclose(image, srgb_encode(linear), atol=tol), name
        meta = read_image_metadata(tmp_path / name)
        for suffix, depth in ((".png", 16), (".tif", 16), (".png", 8)):
            save_image(image, tmp_path / f"again{suffix}", bit_depth=depth, metadata=meta)
            again, _ = load_image(tmp_path / f"again{suffix}")
            # 8 bits of linear light are coarse in the shadows: half a level is 12.92 / 510 once encoded
            assert (again - image).abs().max() < (1e-3 if depth == 16 else 0.026), (name, suffix, depth)
            with Image.open(tmp_path / f"again{suffix}") as out:
                assert out.info["icc_profile"] == meta["icc_profile"]
    # Where the profile is not written, neither is linear light: the display values as they are.
    image, _ = load_image(tmp_path / "8.png")
    save_image(image, tmp_path / "plain.bmp", metadata=read_image_metadata(tmp_path / "8.png"))
    save_image(image[:, :1], tmp_path / "gray_out.png", metadata=read_image_metadata(tmp_path / "8.png"))
    assert torch.allclose(load_image(tmp_path / "plain.bmp")[0], image, atol=0.5 / 255)
    assert torch.allclose(load_image(tmp_path / "gray_out.png")[0], image[:, :1], atol=0.5 / 255)
    levels = (image[0] * 65535).round().to(torch.uint16)  # tiles' levels, as the CLI hands them over
    save_image(levels, tmp_path / "levels.tif", bit_depth=16, metadata=read_image_metadata(tmp_path / "8.png"))
    assert torch.allclose(load_image(tmp_path / "levels.tif")[0], image, atol=1e-3)


def test_a_float_tiff_loads_without_a_warning(tmp_path):
    import warnings

    values = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warned of a read-only NumPy buffer
        image, _ = load_image(tmp_path / "f.tif")
    assert image.shape == (1, 1, 8, 8) and torch.allclose(image[0, 0], torch.from_numpy(values), atol=1e-6)


def test_tiff16_colour_is_read_and_written_with_all_bits(tmp_path):
    import tifffile

    arr = np.random.default_rng(3).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", arr, photometric="rgb")  # as Lightroom exports
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(arr, -1, 0), photometric="rgb", planarconfig="separate")
    img, depth = load_image(tmp_path / "deep.tif")
    assert depth == 16 and img.shape == (1, 3, 6, 9)
    assert np.abs(img[0].permute(1, 2, 0).numpy() * 65535 - arr).max() < 0.02  # Pillow alone keeps 8 bits
    assert torch.equal(load_image(tmp_path / "planar.tif")[0], img)
    assert "dpi" not in read_image_metadata(tmp_path / "deep.tif")  # no resolution tags: not Pillow's 1 dpi
    rgba = torch.cat([img[0], torch.linspace(0, 1, 9).expand(1, 6, 9)])
    assert save_image(rgba, tmp_path / "out.tif", bit_depth=16, metadata={"dpi": (300.0, 300.0)}) == 16
    back, depth = load_image(tmp_path / "out.tif")
    assert depth == 16 and back.shape == (1, 4, 6, 9) and (back[0] - rgba).abs().max() <= 0.51 / 65535
    assert read_image_metadata(tmp_path / "out.tif")["dpi"] == (300.0, 300.0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_a_16_bit_png_as_pillow_applies_it_to_8_bit(tmp_path, orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "8.png", exif=exif.tobytes())
    with open(tmp_path / "16.png", "wb") as f:  # pypng for the pixels, the eXIf chunk added after IHDR
        png.Writer(7, 5, greyscale=False, bitdepth=16).write(f, (arr.astype(np.uint16) * 257).reshape(5, 21))
    chunks = list(png.Reader(filename=str(tmp_path / "16.png")).chunks())
    chunks.insert(1, (b"eXIf", exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()))
    with open(tmp_path / "16.png", "wb") as f:
        png.write_chunks(f, chunks)
    upright8, _ = load_image(tmp_path / "8.png")
    upright16, depth = load_image(tmp_path / "16.png")
    assert depth == 16 and torch.allclose(upright16, upright8, atol=1e-6)
    assert upright8.shape[-2:] == ((7, 5) if orientation >= 5 else (5, 7))


def test_rgba_as_jpeg_is_flattened_onto_white_and_format_limits_are_known(tmp_path):
    from oftsr.images import check_output_size

    rgba = torch.zeros(4, 8, 8)
    rgba[1] = 1  # green everywhere, visible on the left half only
    rgba[3, :, :4] = 1
    save_image(rgba, tmp_path / "f.jpg")
    out = np.asarray(Image.open(tmp_path / "f.jpg")).astype(int)
    assert np.abs(out[:, 0] - [0, 255, 0]).max() <= 3 and np.abs(out[:, 7] - [255, 255, 255]).max() <= 3
    levels = (rgba * 255).round().to(torch.uint8)  # integer levels, as the CLI writes
    save_image(levels, tmp_path / "g.jpg")
    assert np.abs(np.asarray(Image.open(tmp_path / "g.jpg")).astype(int) - out).max() <= 1
    check_output_size(tmp_path / "a.webp", 16383, 100)
    check_output_size(tmp_path / "a.png", 70000, 100)
    with pytest.raises(ValueError, match=r"a.webp: .webp holds at most 16383 px a side, and the result is 16384x8"):
        check_output_size(tmp_path / "a.webp", 16384, 8)
    with pytest.raises(ValueError, match="at most 65500"):
        check_output_size(tmp_path / "a.JPG", 10, 65501)


def test_a_phones_mpo_jpeg_is_one_picture(tmp_path):
    from oftsr.images import frame_count

    a = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    a.save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[a.resize((4, 4))])
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    assert frame_count(tmp_path / "phone.jpg") == 1


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" '
       b'exif:PixelXDimension="4" xmp:Rating="5"><tiff:ImageWidth>4</tiff:ImageWidth>'
       b'<dc:rights>(c) A. Photographer</dc:rights></rdf:Description></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("name,bits", [("o.jpg", 8), ("o.png", 8), ("o.webp", 8), ("o.tif", 8), ("o16.png", 16),
                                       ("o16.tif", 16)])
def test_xmp_is_kept_upright_and_without_the_old_size(tmp_path, name, bits):
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make: a source with both blocks (Lightroom's exports, phones) keeps both
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "src.jpg", xmp=XMP, exif=exif)
    xmp = read_image_metadata(tmp_path / "src.jpg")["xmp"]
    assert b'tiff:Orientation="1"' in xmp and b'xmp:Rating="5"' in xmp and b"A. Photographer" in xmp
    assert b"PixelXDimension" not in xmp and b"ImageWidth" not in xmp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert save_image(torch.rand(3, 8, 8), tmp_path / name, bit_depth=bits,
                          metadata=read_image_metadata(tmp_path / "src.jpg")) == bits
    assert read_image_metadata(tmp_path / name)["xmp"] == xmp
    # the 16-bit TIFF writer holds no EXIF (documented): said
    assert [str(w.message) for w in caught] == ([
        "o16.tif: a 16-bit TIFF is written here without the source's EXIF (camera, lens and exposure); a .png output "
        "keeps it with 16 bits, an 8-bit .tif with 8"] if name == "o16.tif" else [])
    if name != "o16.tif":
        with Image.open(tmp_path / name) as out:
            assert out.getexif().get(0x010F) == "Canon", name


def test_png_text_chunks_of_ai_images_are_kept_in_png_results(tmp_path):
    """A1111's `parameters` and ComfyUI's `prompt` / `workflow` travel with a PNG result (8 or
    16 bits), in Latin-1 tEXt or UTF-8 iTXt; other formats are written without them."""
    from PIL import PngImagePlugin

    text = {"parameters": "a cat, Steps: 20, Sampler: Euler a", "workflow": '{"nodes": [{"title": "猫"}]}',
            "Title": "Ça va"}
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    Image.new("RGB", (4, 4)).save(tmp_path / "ai.png", pnginfo=info)
    meta = read_image_metadata(tmp_path / "ai.png")
    assert meta["png_text"] == text and b"A. Photographer" in meta["xmp"]  # the XMP once, as XMP
    for bits in (8, 16):
        save_image(torch.rand(3, 8, 8), tmp_path / f"o{bits}.png", bit_depth=bits, metadata=meta)
        with Image.open(tmp_path / f"o{bits}.png") as out:
            assert {k: v for k, v in out.text.items() if k in text} == text, bits
            assert read_image_metadata(tmp_path / f"o{bits}.png") == meta
    with pytest.warns(UserWarning, match=r"o.jpg: the source's PNG text \(workflow, Title\) has no place in JPEG"):
        save_image(torch.rand(3, 8, 8), tmp_path / "o.jpg", metadata=meta)
    assert "png_text" not in read_image_metadata(tmp_path / "o.jpg")


def _exif_types(data: bytes) -> dict[int, tuple[int, bytes]]:
    """{tag: (field type, value bytes)} of an EXIF block's Exif sub-directory, read by hand
    (Pillow forgets the types it read)."""
    import struct

    tiff = data[6:] if data.startswith(b"Exif\0\0") else data
    order = "<" if tiff[:2] == b"II" else ">"

    def entries(offset):
        n = struct.unpack_from(order + "H", tiff, offset)[0]
        for i in range(n):
            tag, kind, count, value = struct.unpack_from(order + "HHI4s", tiff, offset + 2 + 12 * i)
            at = struct.unpack(order + "I", value)[0]
            yield tag, kind, value, value[:count] if count <= 4 else tiff[at:at + count]  # bytes: 1 a value

    ifd0 = {tag: field for tag, _, field, _ in entries(struct.unpack_from(order + "I", tiff, 4)[0])}
    return {tag: (kind, value) for tag, kind, _, value in entries(struct.unpack(order + "I", ifd0[0x8769])[0])}


def test_exif_undefined_fields_keep_their_type_and_ai_settings_go_into_the_user_comment(tmp_path):
    """Pillow writes EXIF's UNDEFINED fields (MakerNote, UserComment) back as BYTE, which
    type-strict readers (piexif: A1111's PNG Info) take for numbers. A result keeps them
    UNDEFINED; a PNG's A1111 `parameters` become a JPEG or WebP result's UserComment,
    UTF-16BE after "UNICODE" as A1111 writes it."""
    from PIL import PngImagePlugin

    from oftsr.exif import exif_bytes

    camera = Image.Exif()
    camera[0x010F] = "Canon"
    camera[0x8769] = {0x927C: b"\x01\x02maker note", 0x9286: b"ASCII\0\0\0own comment", 0x9101: b"\x01\x02\x03\x00"}
    assert {k: kind for k, (kind, _) in _exif_types(camera.tobytes()).items()} == {0x927C: 1, 0x9286: 1, 0x9101: 1}
    Image.new("RGB", (8, 8)).save(tmp_path / "camera.jpg", exif=exif_bytes(camera))
    for name in ("o.jpg", "o.webp", "o.png", "o16.png", "o.tif", "xmp.tif"):
        meta = read_image_metadata(tmp_path / "camera.jpg")
        if name == "xmp.tif":  # the EXIF merged with the XMP
            meta["xmp"] = XMP
        save_image(torch.rand(3, 8, 8), tmp_path / name, bit_depth=16 if name == "o16.png" else 8, metadata=meta)
        with Image.open(tmp_path / name) as out:  # a TIFF's EXIF is in the file's own directories
            fields = _exif_types(out.info["exif"] if out.format != "TIFF" else (tmp_path / name).read_bytes())
        assert fields == {0x927C: (7, b"\x01\x02maker note"), 0x9286: (7, b"ASCII\0\0\0own comment"),
                          0x9101: (7, b"\x01\x02\x03\x00")}, name
    settings = "a cat, 写真\nSteps: 20, Sampler: Euler a"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", settings)
    info.add_text("workflow", "{}")
    for exif in (None, Image.Exif(), camera):  # no EXIF; EXIF without an Exif sub-directory; a comment of its own
        if exif is not None:
            exif[0x0110] = "EOS R5"
        Image.new("RGB", (8, 8)).save(tmp_path / "ai.png", pnginfo=info, **({"exif": exif.tobytes()} if exif else {}))
        for name in ("ai.jpg", "ai.webp"):
            left_out = "parameters, workflow" if exif is camera else "workflow"  # the camera's comment is kept
            with pytest.warns(UserWarning, match=rf"PNG text \({left_out}\) has no place in (JPEG|WebP) here: written"):
                save_image(torch.rand(3, 8, 8), tmp_path / name, metadata=read_image_metadata(tmp_path / "ai.png"))
            with Image.open(tmp_path / name) as out:
                kind, comment = _exif_types(out.info["exif"])[0x9286]
                assert out.getexif().get(0x0110) == (None if exif is None else "EOS R5")
            expected = b"ASCII\0\0\0own comment" if exif is camera else b"UNICODE\0" + settings.encode("utf_16_be")
            assert (kind, comment) == (7, expected), (name, exif)


def test_cmyk_goes_through_its_embedded_profile(tmp_path, monkeypatch):
    from PIL import ImageCms

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red ink
    cmyk.save(tmp_path / "plain.jpg")
    plain, _ = load_image(tmp_path / "plain.jpg")
    assert plain.shape == (1, 3, 4, 4) and plain[0, 0].mean() > 0.9 and plain[0, 1].mean() < 0.1
    seen = []

    def convert(im, src, dst, outputMode):  # no CMYK profile can be made here: check what it is given
        seen.append((im.mode, src.tobytes()[:4], outputMode))
        return im.convert("RGB").point(lambda v: 255 - v)

    monkeypatch.setattr(ImageCms, "profileToProfile", convert)
    monkeypatch.setattr(ImageCms, "ImageCmsProfile", lambda f: type("P", (), {"tobytes": lambda self: f.read()})())
    cmyk.save(tmp_path / "profiled.jpg", icc_profile=b"\x00\x00\x02\x00" + b"x" * 200)
    converted, _ = load_image(tmp_path / "profiled.jpg")
    assert seen == [("CMYK", b"\x00\x00\x02\x00", "RGB")]
    assert torch.allclose(converted, 1 - plain, atol=2 / 255)  # the profile's conversion was used


def test_float_tiffs_are_read_as_display_values_and_hdr_is_refused(tmp_path):
    """32-bit and 16-bit float TIFFs (Photoshop's, GIMP's) of an ordinary photograph: read at
    full precision (bit depth 16, so a same-format result keeps it). HDR values past 1 are
    refused with what to do, never clipped."""
    import tifffile

    rng = np.random.default_rng(0)
    rgb = rng.random((6, 10, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "rgb32.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb16f.tif", rgb.astype(np.float16), photometric="rgb")
    for name, tol in (("rgb32.tif", 1e-7), ("rgb16f.tif", 1e-3)):
        image, depth = load_image(tmp_path / name)
        assert image.shape == (1, 3, 6, 10) and depth == 16
        assert torch.allclose(image[0], torch.from_numpy(rgb).permute(2, 0, 1), atol=tol)
    tifffile.imwrite(tmp_path / "gray.tif", rgb[..., 0])
    image, depth = load_image(tmp_path / "gray.tif")
    assert image.shape == (1, 1, 6, 10) and depth == 16
    for name, arr in (("hdr.tif", rgb * 4), ("hdr_gray.tif", rgb[..., 0] * 4)):
        tifffile.imwrite(tmp_path / name, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
        with pytest.raises(ValueError, match=rf"{name}: a floating-point \(HDR\) image with values from .* to 3\.\d+, .*"
                                             r"tone-map it, or export it with 16 bits"):
            load_image(tmp_path / name)


def test_float_tiffs_tifffile_cannot_decode(tmp_path, monkeypatch):
    """Where tifffile lacks a codec (LZW without imagecodecs): a gray float TIFF goes through
    Pillow at full precision with the same range check; an RGB one, which Pillow cannot
    read, says to install imagecodecs instead of "truncated"."""
    import tifffile

    gray = np.linspace(0, 1, 60, dtype=np.float32).reshape(6, 10)
    Image.fromarray(gray).save(tmp_path / "g.tif", compression="tiff_lzw")
    Image.fromarray(gray * 3 - 1).save(tmp_path / "g_hdr.tif", compression="tiff_lzw")
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([gray] * 3, -1), photometric="rgb")

    def no_codec(*a, **k):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full precision: no "8 bits" warning
        image, depth = load_image(tmp_path / "g.tif")
    assert depth == 16 and torch.allclose(image[0, 0], torch.from_numpy(gray), atol=1e-7)
    with pytest.raises(ValueError, match=r"g_hdr.tif: a floating-point \(HDR\) image with values from -1 to 2"):
        load_image(tmp_path / "g_hdr.tif")
    with pytest.raises(ValueError, match=r"rgb.tif: this TIFF's compression needs the imagecodecs package"):
        load_image(tmp_path / "rgb.tif")


def test_jpeg_keeps_full_colour_resolution_at_high_quality_and_tiff_is_compressed(tmp_path):
    """4:4:4 chroma from quality 90 on (4:2:0 below, as the size matters more there); 8-bit
    TIFFs are written with lossless deflate, as the 16-bit ones (uncompressed where an EXIF
    block must be kept: Pillow's compressing writer cannot write one)."""
    from PIL import JpegImagePlugin

    image = torch.rand(1, 3, 32, 32)
    for quality, sampling in ((95, 0), (90, 0), (80, 2)):
        save_image(image, tmp_path / f"q{quality}.jpg", quality=quality)
        with Image.open(tmp_path / f"q{quality}.jpg") as im:
            assert JpegImagePlugin.get_sampling(im) == sampling, quality
    save_image(image, tmp_path / "x.tif")
    with Image.open(tmp_path / "x.tif") as im:
        assert im.info["compression"] == "tiff_adobe_deflate"
        assert np.array_equal(np.asarray(im), (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_a_jpeg_named_heic_is_read_without_pillow_heif(tmp_path):
    Image.fromarray(np.full((4, 6, 3), 200, dtype=np.uint8)).save(tmp_path / "IMG_0002.heic", format="JPEG")
    image, depth = load_image(tmp_path / "IMG_0002.heic")  # decided by content, as the README says
    assert image.shape == (1, 3, 4, 6) and depth == 8


def test_heic_without_pillow_heif_says_what_to_install_and_folders_list_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("pillow_heif") is not None:
        pytest.skip("pillow-heif is installed")
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    with pytest.raises(ValueError, match=r"IMG_0001.HEIC: HEIC/HEIF images need the pillow-heif package"):
        load_image(tmp_path / "IMG_0001.HEIC")
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "a.avif")
    assert [p.name for p in list_images([tmp_path])] == ["IMG_0001.HEIC", "a.avif"]  # tried and reported, not ignored
    assert load_image(tmp_path / "a.avif")[0].shape == (1, 3, 4, 4)


def test_tiffs_pillow_cannot_read_at_16_bits(tmp_path, monkeypatch):
    import tifffile

    import oftsr.images as images

    # 16-bit gray + alpha, as we write it: Pillow cannot identify it, tifffile reads it
    la = torch.stack([torch.linspace(0, 1, 12).expand(5, 12), torch.full((5, 12), 0.5)])
    assert save_image(la, tmp_path / "la.tif", bit_depth=16) == 16
    back, depth = load_image(tmp_path / "la.tif")
    assert depth == 16 and back.shape == (1, 2, 5, 12) and (back[0] - la).abs().max() <= 0.51 / 65535
    # 16-bit CMYK is Pillow's to convert, not read as RGBA
    tifffile.imwrite(tmp_path / "cmyk16.tif", np.full((4, 6, 4), 30000, dtype=np.uint16), photometric="separated")
    with pytest.warns(UserWarning, match="cmyk16.tif: a 16-bit CMYK image is converted to RGB with 8 bits per channel"):
        img, depth = load_image(tmp_path / "cmyk16.tif")
    assert img.shape == (1, 3, 4, 6) and depth == 8
    # a compression tifffile reads only with imagecodecs (LZW from Photoshop): 8 bits, said
    rgb = np.random.default_rng(0).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "lzw.tif", rgb, photometric="rgb")

    def no_codec(*a, **k):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    with pytest.warns(UserWarning, match=r"lzw.tif: read with 8 bits per channel, not its 16 .*pip install imagecodecs"):
        img, depth = images.load_image(tmp_path / "lzw.tif")
    assert depth == 8 and img.shape == (1, 3, 4, 6)
    assert np.abs(img[0].permute(1, 2, 0).numpy() * 255 - rgb / 257).max() <= 1  # the high bytes


def test_gray_tiffs_pillow_would_scale_wrongly(tmp_path, monkeypatch):
    import tifffile

    gray = np.random.default_rng(1).integers(0, 256, (5, 7)).astype(np.uint16)
    # Pillow opens signed and 32-bit gray as "I" and would divide it by 65535: refused by name
    for name, arr in [("i16.tif", gray.astype(np.int16) * 128), ("u32.tif", gray.astype(np.uint32) * 16843009),
                      ("i32.tif", gray.astype(np.int32)), ("i8.tif", (gray // 2).astype(np.int8))]:
        tifffile.imwrite(tmp_path / name, arr)
        with pytest.raises(ValueError, match=rf"{name}: {arr.dtype} samples are not supported; save it with unsigned "
                                             rf"8 or 16 bits per channel"):
            load_image(tmp_path / name)
    # min-is-white gray (0 = white) reads alike at 8 and 16 bits: inverted
    tifffile.imwrite(tmp_path / "mw8.tif", gray.astype(np.uint8), photometric="miniswhite")
    tifffile.imwrite(tmp_path / "mw16.tif", gray * 257, photometric="miniswhite")
    (a, da), (b, db) = load_image(tmp_path / "mw8.tif"), load_image(tmp_path / "mw16.tif")
    assert (da, db) == (8, 16) and a.shape == b.shape == (1, 1, 5, 7)
    assert torch.allclose(b[0, 0], torch.from_numpy(1 - gray / 255).float(), atol=1e-6)
    assert torch.allclose(a, b, atol=1e-6)
    # when tifffile lacks the codec, such a file is refused, not read wrongly by Pillow
    tifffile.imwrite(tmp_path / "i16b.tif", gray.astype(np.int16))

    def no_codec(*a, **k):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    with pytest.raises(ValueError, match=r"i16b.tif: int16 samples are not supported"):  # by its tags: no codec
        load_image(tmp_path / "i16b.tif")
    with pytest.raises(ValueError, match=r"mw16.tif: .* needs the imagecodecs package"):
        load_image(tmp_path / "mw16.tif")
    assert load_image(tmp_path / "mw8.tif")[1] == 8  # Pillow reads 8-bit min-is-white itself


def test_xmp_too_long_for_jpeg_is_left_out_with_a_warning_and_the_rest_kept(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b" " * 70_000 + b"</x:xmpmeta>"
    with pytest.warns(UserWarning, match=r"o.jpg: the source's XMP \(70,048 bytes\) is more than JPEG holds"):
        save_image(torch.rand(3, 8, 8), tmp_path / "o.jpg", metadata={"xmp": xmp, "icc_profile": icc})
    kept = read_image_metadata(tmp_path / "o.jpg")
    assert kept["icc_profile"] == icc and "xmp" not in kept


def test_bleed_colour_in_half_precision():
    from oftsr.color import bleed_colour

    colour = torch.rand(2, 3, 8, 8).half()
    alpha = torch.zeros(2, 1, 8, 8)
    alpha[0, :, 2:6, 2:6] = 1  # the second image is transparent all over
    out = bleed_colour(colour, alpha)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert torch.equal(out[0, :, 2:6, 2:6], colour[0, :, 2:6, 2:6])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_gray_tiff_is_turned_upright_too(tmp_path, orientation, dtype):
    import tifffile

    from oftsr.images.read import orient

    peak = np.iinfo(dtype).max
    arr = np.random.default_rng(orientation).integers(0, peak + 1, (5, 7), dtype=dtype)
    tifffile.imwrite(tmp_path / "g.tif", arr, photometric="minisblack", extratags=[(274, 3, 1, orientation, True)])
    img, depth = load_image(tmp_path / "g.tif")
    assert depth == (16 if dtype == np.uint16 else 8)
    upright = orient(arr[..., None], orientation)[..., 0]
    assert img.shape == (1, 1, *upright.shape) and np.array_equal(np.round(img[0, 0].numpy() * peak), upright)


def test_xmp_with_single_quoted_attributes_is_made_upright_too():
    xmp = upright_xmp("<rdf:Description tiff:Orientation='8' exif:PixelYDimension='3000' "
                       "tiff:ImageWidth = '4000' xmp:Rating='4' dc:title=\"Tom's barn\"/>")
    assert xmp == b"<rdf:Description tiff:Orientation='1' xmp:Rating='4' dc:title=\"Tom's barn\"/>"


@pytest.mark.parametrize("bits", [8, 16])
def test_premultiplied_alpha_tiff_is_read_as_straight_colour(tmp_path, bits):
    """A TIFF's associated alpha (ExtraSamples 1) holds colour multiplied by alpha: read
    straight, as every other format is, so half-transparent edges are not darkened."""
    import tifffile

    peak = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    straight = np.array([0.8, 0.4, 0.2])
    alpha = np.array([[1.0, 0.5], [0.25, 0.0]])
    rgba = np.concatenate([straight * alpha[..., None], alpha[..., None]], axis=-1)
    tifffile.imwrite(tmp_path / "rgba.tif", np.round(rgba * peak).astype(dtype), photometric="rgb",
                     extrasamples=("assocalpha",))
    tifffile.imwrite(tmp_path / "la.tif", np.round(rgba[..., [0, 3]] * peak).astype(dtype), photometric="minisblack",
                     extrasamples=("assocalpha",))
    x, depth = load_image(tmp_path / "rgba.tif")
    assert x.shape == (1, 4, 2, 2) and depth == bits
    tol = 2.5 / 255 if bits == 8 else 1e-3  # 8 bits: premultiplied by 0.25, unpremultiplied by 4
    for (i, j) in [(0, 0), (0, 1), (1, 0)]:
        assert np.allclose(x[0, :3, i, j].numpy(), straight, atol=tol), (i, j, x[0, :, i, j])
        assert abs(float(x[0, 3, i, j]) - alpha[i, j]) <= 0.5 / peak + 1e-6
    assert float(x[0, 3, 1, 1]) == 0.0
    g, _ = load_image(tmp_path / "la.tif")
    assert g.shape == (1, 2, 2, 2)
    assert abs(float(g[0, 0, 0, 1]) - 0.8) < tol and abs(float(g[0, 1, 0, 1]) - 0.5) <= 0.5 / peak + 1e-6


def test_a_tiffs_camera_exif_is_kept_without_its_layout_tags(tmp_path):
    """Lightroom's and Capture One's TIFF exports carry the camera, lens, date and GPS in
    EXIF blocks: the upscaled copy keeps them, but not the source's strips, size or
    orientation; a 16-bit PNG keeps them too (an eXIf chunk)."""
    exif = Image.Exif()
    exif.update({0x010F: "Canon", 0x0110: "EOS R5", 0x8298: "(c) A. Photographer", 0x0112: 6})
    exif.get_ifd(0x8769).update({0x829A: (1, 250), 0x9003: "2026:01:02 03:04:05", 0xA002: 8, 0xA003: 4})
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 0.0)})
    Image.new("RGB", (8, 4), (10, 20, 30)).save(tmp_path / "in.tif", exif=exif.tobytes())
    meta = read_image_metadata(tmp_path / "in.tif")
    kept = Image.Exif()
    kept.load(meta["exif"])
    assert {k: kept[k] for k in (0x010F, 0x0110, 0x8298, 0x0112)} == {0x010F: "Canon", 0x0110: "EOS R5",
                                                                      0x8298: "(c) A. Photographer", 0x0112: 1}
    assert not {256, 257, 258, 259, 262, 273, 277, 278, 279} & set(kept)  # no layout of the source file
    assert dict(kept.get_ifd(0x8769)) == {0x829A: (1, 250), 0x9003: "2026:01:02 03:04:05"}
    assert kept.get_ifd(0x8825)[1] == "N"
    image = load_image(tmp_path / "in.tif")[0]
    assert image.shape == (1, 3, 8, 4)  # turned upright by its orientation 6
    for name, bits in [("o.jpg", 8), ("o.png", 8), ("o.tif", 8), ("o16.png", 16)]:
        save_image(torch.rand(3, 16, 32), tmp_path / name, bit_depth=bits, metadata=meta)
        with Image.open(tmp_path / name) as out:
            written = out.getexif()
            assert written[0x010F] == "Canon" and written.get(0x0112) == 1, name
            assert written.get_ifd(0x8769).get(0x829A) == (1, 250), name
            assert out.size == (32, 16), name
        assert load_image(tmp_path / name)[0].shape == (1, 3, 16, 32), name  # orientation 1: not turned again


def test_a_jpegs_exif_size_tags_are_left_out_so_a_tiff_result_keeps_its_metadata(tmp_path):
    """Some writers put the source's ImageWidth/ImageLength in a JPEG's EXIF: left out of the
    copy (they misstate its size), and an 8-bit TIFF result, whose own tags they clashed
    with ("codec configuration error": the file written with no metadata at all), keeps the
    profile, the EXIF and the DPI."""
    from PIL import ImageCms

    exif = Image.Exif()
    exif.update({0x0100: 64, 0x0101: 48, 0x010F: "Canon", 0x8298: "(c) A. Photographer", 0x0112: 6})
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "in.jpg", exif=exif.tobytes(), icc_profile=icc,
                                                  dpi=(300, 300))
    meta = read_image_metadata(tmp_path / "in.jpg")
    kept = Image.Exif()
    kept.load(meta["exif"])
    assert kept[0x010F] == "Canon" and kept[0x0112] == 1 and 0x0100 not in kept and 0x0101 not in kept
    for name in ("o.tif", "o.png", "o.jpg"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "written without the metadata" would fail here
            save_image(torch.rand(3, 192, 256), tmp_path / name, metadata=meta)
        with Image.open(tmp_path / name) as out:
            written = out.getexif()
            assert out.size == (256, 192) and out.info.get("icc_profile") == icc, name
            assert written[0x010F] == "Canon" and written[0x8298] == "(c) A. Photographer", name
            assert tuple(round(d) for d in out.info["dpi"]) == (300, 300), name
            assert (written.get(0x0100), written.get(0x0101)) == ((256, 192) if name == "o.tif" else (None, None))


def test_a_tiffs_layout_description_is_not_taken_for_a_caption(tmp_path):
    """tifffile and ImageJ write the file's own shape into ImageDescription (and tifffile
    its name into Software): not carried to a copy of another size. Our 16-bit TIFFs write
    neither, so reading them back says nothing about a shape."""
    import tifffile

    tifffile.imwrite(tmp_path / "shaped.tif", np.zeros((6, 8, 3), np.uint8), photometric="rgb")
    with Image.open(tmp_path / "shaped.tif") as im:
        assert im.getexif()[0x010E].startswith('{"shape"') and im.getexif()[0x0131].startswith("tifffile")
    assert "exif" not in read_image_metadata(tmp_path / "shaped.tif")
    tifffile.imwrite(tmp_path / "captioned.tif", np.zeros((6, 8, 3), np.uint8), photometric="rgb",
                     description="Barn at dusk", software="Lightroom", metadata=None)
    kept = Image.Exif()
    kept.load(read_image_metadata(tmp_path / "captioned.tif")["exif"])
    assert kept[0x010E] == "Barn at dusk" and kept[0x0131] == "Lightroom"
    save_image(torch.rand(3, 6, 8), tmp_path / "ours16.tif", bit_depth=16)
    with tifffile.TiffFile(tmp_path / "ours16.tif") as tif:
        assert "ImageDescription" not in tif.pages[0].tags and "Software" not in tif.pages[0].tags


def test_exif_too_long_for_jpeg_is_left_out_with_a_warning_and_the_rest_kept(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif.get_ifd(0x8769)[0x927C] = b"m" * 70_000  # a camera's maker notes
    Image.new("RGB", (8, 4)).save(tmp_path / "in.tif", exif=exif.tobytes(), icc_profile=icc)
    meta = read_image_metadata(tmp_path / "in.tif")
    assert len(meta["exif"]) > 70_000 and meta["icc_profile"] == icc
    with pytest.warns(UserWarning, match=r"out.jpg: the source's EXIF \(7\d,\d{3} bytes.*written without it"):
        save_image(torch.rand(3, 8, 16), tmp_path / "out.jpg", metadata=meta)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.info.get("icc_profile") == icc and 0x010F not in out.getexif()
    save_image(torch.rand(3, 8, 16), tmp_path / "out.png", metadata=meta)  # PNG holds it
    with Image.open(tmp_path / "out.png") as out:
        assert out.getexif()[0x010F] == "Canon"


def test_an_image_past_pillows_bomb_guard_says_its_size_and_what_to_do(tmp_path, monkeypatch):
    Image.new("L", (1500, 1000)).save(tmp_path / "pano.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)  # Pillow refuses twice this: 1.0 MP
    with pytest.raises(ValueError, match=r"pano.png: the image \(1.5 MP\) is beyond the 1.0 MP that Pillow opens .*"
                                         r"upscale a crop or a smaller copy"):
        load_image(tmp_path / "pano.png")


def test_save_image_refuses_what_it_would_write_wrong(tmp_path):
    """A silent clamp would write 0-255 floats as a white image; each mistake is named
    with its fix, and nothing is written."""
    target = tmp_path / "a.png"
    cases = [
        (torch.full((3, 4, 5), 128.0), {}, "maximum is 128: divide 0-255 values by 255"),
        (torch.full((3, 4, 5), 128), {}, "floats in .0, 1. or uint8 / uint16 levels, got torch.int64"),
        (torch.full((3, 4, 5), float("nan")), {}, "NaN or infinite"),
        (torch.linspace(-1, 1, 60).reshape(3, 4, 5), {}, r"minimum is -1: map \[-1, 1\] values to \[0, 1\]"),
        (np.zeros((4, 5, 3)), {}, r"got ndarray \(a numpy \(H, W, C\) array: torch.from_numpy\(a\).permute\(2, 0, 1\)\)"),
        (torch.rand(6, 5, 3), {}, r"got \(6, 5, 3\): channels come first, image.permute\(2, 0, 1\)"),
        (torch.rand(4, 5), {}, r"a \(C, H, W\) tensor with 1 to 4 channels, got \(4, 5\)"),
        (torch.rand(2, 3, 4, 5), {}, "one image, got a batch of 2"),
        (torch.rand(3, 4, 5), {"bit_depth": 12}, "bit_depth must be 8 or 16, got 12"),
    ]
    for image, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            save_image(image, target, **kw)
    assert list(tmp_path.iterdir()) == []
    assert save_image(torch.full((1, 3, 4, 5), 1.01), target) == 8  # resampling overshoot is clamped
    assert np.asarray(Image.open(target)).min() == 255
    assert save_image(torch.full((3, 4, 5), -0.05), target) == 8  # and undershoot
    assert np.asarray(Image.open(target)).max() == 0


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) if crc is None else crc)


def _png16(extra: bytes = b"", w: int = 8, h: int = 6, declared: tuple[int, int] | None = None) -> bytes:
    """A 16-bit RGB PNG with `extra` chunks before its data (and, with `declared`, a header
    that claims another size)."""
    import struct
    import zlib

    raw = b"".join(b"\0" + b"\x12\x34" * 3 * w for _ in range(h))
    dw, dh = declared or (w, h)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", dw, dh, 16, 2, 0, 0, 0)) + extra
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _tiff_block(entries) -> bytes:
    """A little-endian TIFF/EXIF block of one directory: (tag, type, count, 4-byte value)."""
    import struct

    return b"II*\0" + struct.pack("<IH", 8, len(entries)) + b"".join(
        struct.pack("<HHI", t, k, c) + v for t, k, c, v in entries) + b"\0" * 4


def test_damaged_metadata_never_costs_the_image(tmp_path):
    import struct
    import zlib

    import tifffile

    # a JPEG whose EXIF Pillow cannot write back (a mistyped tag) beside its orientation: turned, not lost
    Image.new("RGB", (8, 6), (200, 10, 10)).save(tmp_path / "bad_exif.jpg", exif=b"Exif\0\0" + _tiff_block(
        [(0x00FE, 1, 1, b"abcd"), (0x0112, 3, 1, struct.pack("<H", 6))]))
    assert load_image(tmp_path / "bad_exif.jpg")[0].shape == (1, 3, 8, 6)
    # a 16-bit PNG whose orientation is NaN, or whose eXIf is junk: upright as stored
    nan = _tiff_block([(0x0112, 12, 1, struct.pack("<I", 26))]) + struct.pack("<d", float("nan"))
    for name, chunk in (("nan.png", _chunk(b"eXIf", nan)), ("junk.png", _chunk(b"eXIf", b"hello world"))):
        (tmp_path / name).write_bytes(_png16(chunk))
        image, depth = load_image(tmp_path / name)
        assert image.shape == (1, 3, 6, 8) and depth == 16 and abs(image.max().item() - 0x1234 / 65535) < 1e-6
    # an ICC chunk of 10 KB that inflates to 64 MB: the image, without the profile, and no 64 MB
    inflate = zlib.compressobj(9)
    bomb = inflate.compress(b"\0" * (64 << 20)) + inflate.flush()
    (tmp_path / "iccp.png").write_bytes(_png16(_chunk(b"iCCP", b"x\0\0" + bomb)))
    assert load_image(tmp_path / "iccp.png")[0].shape == (1, 3, 6, 8)
    # an 8-bit PNG whose text chunk inflates past Pillow's limit: the pixels, with a warning
    Image.new("RGB", (8, 6), (10, 200, 10)).save(tmp_path / "ztxt.png")
    data = (tmp_path / "ztxt.png").read_bytes()
    ztxt = _chunk(b"zTXt", b"comment\0\0" + bomb)
    (tmp_path / "ztxt.png").write_bytes(data[:33] + ztxt + data[33:])  # after the 33-byte signature and header
    with pytest.warns(UserWarning, match=r"ztxt.png: its metadata chunks inflate beyond what Pillow reads \(.*MAX_TEXT_CHUNK\)"):
        image = load_image(tmp_path / "ztxt.png")[0]
    assert image.shape == (1, 3, 6, 8) and image[0, 1].min() > 0.75
    assert read_image_metadata(tmp_path / "ztxt.png") == {}
    # a TIFF only tifffile reads (float RGB) whose XMP tag claims 2 GB as a number: no XMP, no 2 GB
    tifffile.imwrite(tmp_path / "xmp.tif", np.full((6, 8, 3), 0.5, np.float32), photometric="rgb", metadata=None,
                     extratags=[(700, 4, 1, 0x7FFFFFFF, True)])
    assert "xmp" not in read_image_metadata(tmp_path / "xmp.tif")
    assert load_image(tmp_path / "xmp.tif")[0].shape == (1, 3, 6, 8)
    # a resolution of 72/0 (NaN): left out when read; a DPI no writer takes: left out when written, said
    Image.new("RGB", (8, 6)).save(tmp_path / "dpi.tif", dpi=(72, 72))
    (tmp_path / "dpi.tif").write_bytes((tmp_path / "dpi.tif").read_bytes().replace(struct.pack("<II", 72, 1),
                                                                                   struct.pack("<II", 72, 0)))
    assert "dpi" not in read_image_metadata(tmp_path / "dpi.tif")
    for name in ("inf.png", "inf.jpg", "inf.tif", "inf.bmp"):
        with pytest.warns(UserWarning, match=rf"{name}: DPI \(inf, inf\) is not a resolution: written without it"):
            save_image(torch.rand(3, 6, 8), tmp_path / name, metadata={"dpi": (float("inf"), float("inf"))})
        assert load_image(tmp_path / name)[0].shape == (1, 3, 6, 8)


def test_a_16_bit_png_is_guarded_like_pillow_guards_the_others(tmp_path, monkeypatch):
    (tmp_path / "crc.png").write_bytes(_png16(_chunk(b"tEXt", b"k\0v", crc=1234)))  # pypng's errors, as any image's
    with pytest.raises(ValueError, match=r"crc.png: cannot read as an image; .*ChunkError: Checksum error in tEXt"):
        load_image(tmp_path / "crc.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 100x100 image is then a decompression bomb
    (tmp_path / "big.png").write_bytes(_png16(w=100, h=100))
    with pytest.raises(ValueError, match=r"big.png: the image \(0.0 MP\) is beyond the 0.0 MP that Pillow opens"):
        load_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # between one and two limits: Pillow's warning
    with pytest.warns(Image.DecompressionBombWarning):
        assert load_image(tmp_path / "big.png")[0].shape == (1, 3, 100, 100)


def test_a_tiff_only_tifffile_reads_is_turned_by_its_orientation(tmp_path):
    import tifffile

    gray_alpha = np.zeros((6, 8, 2), np.uint16)
    gray_alpha[0, :, 0] = 65535  # the top row white
    gray_alpha[..., 1] = 65535
    tifffile.imwrite(tmp_path / "la.tif", gray_alpha, photometric="minisblack", planarconfig="contig",
                     extrasamples=("unassalpha",), metadata=None, extratags=[(274, 3, 1, 6, True)])  # 90 degrees
    image, depth = load_image(tmp_path / "la.tif")
    assert image.shape == (1, 2, 8, 6) and depth == 16
    assert torch.equal(image[0, 0, :, -1], torch.ones(8)) and image[0, 0, :, :-1].max() == 0  # the top row: right


def test_the_settings_comment_never_costs_the_source_exif_and_is_said_when_left_out(tmp_path):
    """A camera's blank UserComment is no comment (the settings go in); one with text is kept
    and the settings are named as left out; settings that would push a JPEG's EXIF past what
    it holds are left out, not the camera's EXIF. A 16-bit TIFF names the text it drops too."""
    from PIL import PngImagePlugin

    def source(name, comment, settings):
        exif = Image.Exif()
        exif[0x010F] = "Canon"
        if comment is not None:
            exif[0x8769] = {0x9286: comment}
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", settings)
        Image.new("RGB", (8, 6)).save(tmp_path / name, pnginfo=info, exif=exif.tobytes())
        return read_image_metadata(tmp_path / name)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out here
        save_image(torch.rand(3, 6, 8), tmp_path / "blank.jpg", metadata=source("blank.png", b"\0" * 8 + b" " * 40, "cat"))
    with Image.open(tmp_path / "blank.jpg") as out:
        assert _exif_types(out.info["exif"])[0x9286][1] == b"UNICODE\0" + "cat".encode("utf_16_be")
    for name, comment, settings in (("own.png", b"ASCII\0\0\0taken at dawn", "cat"),
                                    ("long.png", None, "a cat, " * 6000)):  # 84,000 bytes in UTF-16
        with pytest.warns(UserWarning, match=r"the source's PNG text \(parameters\) has no place in JPEG here"):
            save_image(torch.rand(3, 6, 8), tmp_path / "o.jpg", metadata=source(name, comment, settings))
        with Image.open(tmp_path / "o.jpg") as out:
            assert out.getexif().get(0x010F) == "Canon", name  # the camera's EXIF kept
            assert _exif_types(out.info["exif"]).get(0x9286, (7, comment))[1] == comment, name
    with pytest.warns(UserWarning, match=r"o16.tif: the source's PNG text \(parameters\) has no place in TIFF here"):
        with pytest.warns(UserWarning, match=r"o16.tif: a 16-bit TIFF is written here without the source's EXIF"):
            save_image(torch.rand(3, 6, 8), tmp_path / "o16.tif", bit_depth=16, metadata=source("t.png", None, "cat"))


def test_a_png_whose_header_claims_more_rows_than_its_data_is_refused(tmp_path):
    (tmp_path / "tall.png").write_bytes(_png16(w=11, h=13, declared=(11, 40)))
    with pytest.raises(ValueError, match=r"tall.png: cannot read as an image; it is truncated .*Not enough image data"):
        load_image(tmp_path / "tall.png")


def test_many_text_chunks_past_pillows_total_limit_and_the_orientation_kept(tmp_path, monkeypatch):
    import zlib

    from PIL import PngImagePlugin

    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_MEMORY", 4 << 20)  # Pillow's 64 MB total, made small
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees
    Image.new("RGB", (4, 6), (10, 200, 10)).save(tmp_path / "many.png", exif=exif.tobytes())
    data = (tmp_path / "many.png").read_bytes()
    text = b"".join(_chunk(b"zTXt", b"k%d\0\0" % i + zlib.compress(b"\0" * (900 << 10))) for i in range(6))
    (tmp_path / "many.png").write_bytes(data[:33] + text + data[33:])
    with pytest.warns(UserWarning, match=r"many.png: its metadata chunks inflate beyond what Pillow reads .*MAX_TEXT_MEMORY"):
        image = load_image(tmp_path / "many.png")[0]
    assert image.shape == (1, 3, 4, 6)  # upright, as the 6 x 4 stored image is shown


def test_image_paths_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    image = torch.rand(3, 8, 8)
    save_image(image, "~/new/a.png")  # the folder is made
    assert (tmp_path / "new" / "a.png").is_file()
    loaded, depth = load_image("~/new/a.png")
    assert depth == 8 and (loaded[0] - image).abs().max() <= 0.5 / 255 + 1e-6
    assert read_image_metadata("~/new/a.png") == read_image_metadata(tmp_path / "new" / "a.png")


def _raw_exif_profile(exif: bytes) -> str:
    """EXIF as ImageMagick and exiv2 put it in a PNG: a text chunk of hex."""
    hexed = exif.hex()
    return "\nexif\n" + f"{len(exif):8d}\n" + "\n".join(hexed[i:i + 72] for i in range(0, len(hexed), 72)) + "\n"


def test_png_orientation_in_a_raw_profile_or_xmp_turns_every_bit_depth_once(tmp_path):
    """ImageMagick writes a PNG's EXIF as a "Raw profile type exif" text chunk; Adobe's tools
    may say the orientation in XMP only. Pillow turns 8-bit files by either; 16-bit files
    (read by pypng) turn the same way, and the result says upright, in its EXIF (the camera
    tags kept), not the stale chunk copied."""
    from PIL import ImageOps
    from PIL.PngImagePlugin import PngInfo

    rng = np.random.default_rng(3)
    stored = rng.integers(0, 65536, (6, 4, 3), dtype=np.uint16)  # 4 wide, 6 high as stored
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Canon"
    raw = _raw_exif_profile(exif.tobytes())
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' \
          b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    info = PngInfo()
    info.add_text("Raw profile type exif", raw, zip=True)
    Image.fromarray((stored >> 8).astype(np.uint8)).save(tmp_path / "raw8.png", pnginfo=info)
    upright8 = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "raw8.png")))
    assert upright8.shape == (4, 6, 3)  # Pillow's own reading, which the 8-bit path follows
    for name, text, packet in [("raw16.png", {"Raw profile type exif": raw}, None), ("xmp16.png", None, xmp)]:
        with open(tmp_path / name, "wb") as f:
            png.Writer(4, 6, greyscale=False, bitdepth=16).write(f, stored.reshape(6, 12))
        png_add_chunks(tmp_path / name, None, packet, None, text)
    Image.fromarray((stored >> 8).astype(np.uint8)).save(tmp_path / "xmp8.png", pnginfo=_xmp_info(xmp))
    for name in ("raw8.png", "raw16.png", "xmp8.png", "xmp16.png"):
        image, depth = load_image(tmp_path / name)
        peak = 65535 if name.endswith("16.png") else 255
        assert depth == (16 if peak == 65535 else 8) and image.shape == (1, 3, 4, 6), name
        levels = np.round(image[0].permute(1, 2, 0).numpy() * peak).astype(np.int64)
        assert np.array_equal(levels >> (8 if peak == 65535 else 0), upright8), name  # turned the same way
    for name in ("raw8.png", "raw16.png"):
        meta = read_image_metadata(tmp_path / name)
        assert "Raw profile type exif" not in meta.get("png_text", {})  # not copied with its stale orientation
        kept = Image.Exif()
        kept.load(meta["exif"])
        assert (kept[0x0112], kept[0x010F]) == (1, "Canon")
        image, depth = load_image(tmp_path / name)
        save_image(image, tmp_path / f"out_{name}", bit_depth=depth, metadata=meta)
        save_image(image, tmp_path / f"out_{name}.jpg", metadata=meta)
        for out in (f"out_{name}", f"out_{name}.jpg"):
            with Image.open(tmp_path / out) as im:
                assert im.getexif()[0x0112] == 1 and im.getexif()[0x010F] == "Canon", out
                assert ImageOps.exif_transpose(im).size == (6, 4)  # upright as written: not turned again


def _xmp_info(xmp: bytes):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


def test_avif_exif_is_kept(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Apple", 6
    Image.new("RGB", (8, 6), (200, 30, 30)).save(tmp_path / "a.avif", exif=exif.tobytes())
    kept = Image.Exif()
    kept.load(read_image_metadata(tmp_path / "a.avif")["exif"])
    assert (kept[0x010F], kept[0x0112]) == ("Apple", 1)


@pytest.mark.parametrize("mode", ["CMYK", "P"])
def test_a_palette_or_cmyk_tiff_turned_sideways_reads_upright(tmp_path, mode):
    """Pillow 13 decodes an uncompressed palette or CMYK TIFF with orientation 5-8 scrambled
    (its size turns at load, its rows do not): such files are read by tifffile and turned."""
    stored = (np.arange(6 * 4 * 3).reshape(6, 4, 3) * 3 % 256).astype(np.uint8)
    Image.fromarray(stored).convert(mode).save(tmp_path / "plain.tif")
    upright = load_image(tmp_path / "plain.tif")[0][0].permute(1, 2, 0).numpy()
    for orientation, turn in [(6, lambda a: np.rot90(a, -1)), (8, np.rot90), (5, lambda a: a.swapaxes(0, 1)),
                              (7, lambda a: a.swapaxes(0, 1)[::-1, ::-1])]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).convert(mode).save(tmp_path / "turned.tif", exif=exif)
        image, depth = load_image(tmp_path / "turned.tif")
        assert depth == 8 and image.shape == (1, 3, 4, 6), orientation
        assert np.abs(image[0].permute(1, 2, 0).numpy() - turn(upright)).max() < 1e-6, orientation
    if mode == "CMYK":  # planar: the samples stored plane by plane, as tifffile reads them (4, H, W)
        import tifffile

        cmyk = np.asarray(Image.fromarray(stored).convert("CMYK"))
        tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(cmyk, -1, 0), photometric="separated",
                         planarconfig="separate", extratags=[(274, "H", 1, 6, True)])
        image, _ = load_image(tmp_path / "planar.tif")
        assert np.abs(image[0].permute(1, 2, 0).numpy() - np.rot90(upright, -1)).max() < 1e-6


def test_a_bilevel_tiff_turned_sideways_reads_upright(tmp_path):
    stored = np.arange(6 * 4).reshape(6, 4) % 3 == 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.tif", exif=exif)  # refused as "bool samples" before
    image, depth = load_image(tmp_path / "turned.tif")
    assert depth == 8 and image.shape == (1, 1, 4, 6)
    assert np.array_equal(image[0, 0].numpy(), np.rot90(stored, -1).astype(np.float32))


def test_pipes_are_refused_not_waited_on_and_pages_are_counted_to_a_cap(tmp_path):
    import os

    import tifffile

    from oftsr.images import MAX_FRAMES_COUNTED, frame_count

    os.mkfifo(tmp_path / "pipe.png")  # reading one blocks until a writer comes: never, here
    with pytest.raises(ValueError, match="pipe.png: not a regular file"):
        load_image(tmp_path / "pipe.png")
    assert read_image_metadata(tmp_path / "pipe.png") == {} and frame_count(tmp_path / "pipe.png") == 1
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for _ in range(MAX_FRAMES_COUNTED + 20):
            tif.write(np.zeros((1, 1), np.uint8))
    assert frame_count(tmp_path / "pages.tif") == MAX_FRAMES_COUNTED + 1  # "more than 100"
    with tifffile.TiffWriter(tmp_path / "three.tif") as tif:
        for _ in range(3):
            tif.write(np.zeros((1, 1), np.uint8))
    assert frame_count(tmp_path / "three.tif") == 3


def test_a_tiff_only_tifffile_reads_is_guarded_against_decompression_bombs(tmp_path):
    import tifffile

    path = tmp_path / "la16.tif"  # 16-bit gray + alpha: Pillow cannot open it, tifffile reads it
    tifffile.imwrite(path, np.zeros((4, 4, 2), np.uint16), photometric="minisblack", extrasamples=("unassalpha",))
    assert load_image(path)[0].shape == (1, 2, 4, 4)
    with tifffile.TiffFile(path, mode="r+b") as tif:  # the header now declares 225 MP
        tif.pages[0].tags["ImageWidth"].overwrite(15000)
        tif.pages[0].tags["ImageLength"].overwrite(15000)
    with pytest.raises(ValueError, match=r"la16.tif: the image \(225.0 MP\) is beyond the 179.0 MP that Pillow opens"):
        load_image(path)


def test_a_16_bit_pngs_text_is_inflated_within_pillows_budget(tmp_path, monkeypatch):
    """The 16-bit reader inflates metadata chunks no further than Pillow would over the whole
    file (MAX_TEXT_MEMORY): past it, a compressed XMP is left out, as Pillow leaves it out."""
    import zlib

    from PIL import PngImagePlugin

    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    with open(tmp_path / "a.png", "wb") as f:
        png.Writer(4, 6, greyscale=True, bitdepth=16).write(f, np.zeros((6, 4), np.uint16))
    with open(tmp_path / "a.png", "rb") as f:
        chunks = list(png.Reader(file=f).chunks())
    chunks.insert(1, (b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(xmp)))
    with open(tmp_path / "a.png", "wb") as f:
        png.write_chunks(f, chunks)
    assert load_image(tmp_path / "a.png")[0].shape == (1, 1, 4, 6)  # turned by the compressed XMP
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_MEMORY", 0)
    assert load_image(tmp_path / "a.png")[0].shape == (1, 1, 6, 4)  # the budget spent: left as stored


def test_an_upload_in_memory_loads_as_its_file_does(tmp_path):
    import io

    rng = np.random.default_rng(5)
    with open(tmp_path / "deep.png", "wb") as f:  # 16-bit: read by pypng, which needs a file
        png.Writer(5, 4, greyscale=False, bitdepth=16).write(f, rng.integers(0, 65536, (4, 15), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=90)
    for name in ("deep.png", "a.jpg"):
        data = (tmp_path / name).read_bytes()
        expected, depth = load_image(tmp_path / name)
        for upload in (data, io.BytesIO(data), bytearray(data)):
            got, got_depth = load_image(upload)
            assert got_depth == depth and torch.equal(got, expected), (name, type(upload))
    with pytest.raises(ValueError, match="upload: cannot read as an image"):
        load_image(b"not an image at all")
