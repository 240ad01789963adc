import pytest
import torch

from oftsr.grid import _layout, labelled_grid


def cells(rows: int, cols: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(rows, cols, 3, h, w, generator=g) * 0.8 + 0.1  # never pure white, so cells show


def test_cells_are_placed_unchanged_under_a_label_band():
    images = cells(2, 3, 40, 64)
    sheet = labelled_grid(images, ["t = 0", "t = 0.5", "t = 1"])
    gap, font_size, width, height = _layout(2, 3, 40, 64, 7)
    assert sheet.shape == (3, height, width) and width == 3 * 64 + 2 * gap
    band = height - 2 * 40 - gap
    assert band == round(font_size * 1.6) and font_size >= 10
    for r in range(2):
        for k in range(3):
            y, x = band + r * (40 + gap), k * (64 + gap)
            assert torch.equal(sheet[:, y:y + 40, x:x + 64], images[r, k])
    assert torch.all(sheet[:, band + 40:band + 40 + gap] == 1)  # white lines between rows
    assert torch.all(sheet[:, band:, 64:64 + gap] == 1)  # ... and between columns


def test_each_column_is_labelled_with_its_own_text():
    sheet = labelled_grid(cells(1, 3, 48, 80), ["t = 0", "t = 0.25", "t = 0.25"])
    band = sheet[0, :sheet.shape[1] - 48]
    gap = _layout(1, 3, 48, 80, 8)[0]
    cols = [band[:, k * (80 + gap):k * (80 + gap) + 80] for k in range(3)]
    for col in cols:
        assert (col < 0.5).sum() > 20  # dark text on white
        assert col[:, :4].min() == 1 and col[:, -4:].min() == 1  # centred: margins stay white
    assert torch.equal(cols[1], cols[2]) and not torch.equal(cols[0], cols[1])


def test_a_long_sheet_is_scaled_down_to_fit():
    images = cells(1, 5, 120, 300) * torch.linspace(0.2, 1.0, 5).view(1, 5, 1, 1, 1)  # each column its own brightness
    sheet = labelled_grid(images, [f"t = {t}" for t in range(5)], max_side=600)
    assert max(sheet.shape[1:]) <= 600 and sheet.shape[2] > 560  # fills the limit, within rounding
    assert sheet.min() >= 0 and sheet.max() <= 1
    # each cell is the antialiased reduction of its input, in its place: mean colour kept
    gap = 2
    cell_w = (sheet.shape[2] - 4 * gap) // 5
    cell_h = round(120 * cell_w / 300)
    for k in range(5):
        cell = sheet[:, -cell_h:, k * (cell_w + gap):k * (cell_w + gap) + cell_w]
        assert (cell.mean((1, 2)) - images[0, k].mean((1, 2))).abs().max() < 0.01, k


def test_keeps_dtype_and_channels():
    images = cells(1, 2, 32, 32).to(torch.float16)
    rgba = torch.cat([images, torch.full_like(images[:, :, :1], 0.5)], dim=2)
    sheet = labelled_grid(rgba, ["a", "b"])
    assert sheet.dtype == torch.float16 and sheet.shape[0] == 4
    assert torch.all(sheet[3, :10] == 1)  # the label band is opaque


def test_levels_give_a_sheet_of_the_same_levels():
    """uint8 / uint16 images, as upscale(out_dtype=...) returns them: white band and gaps at
    the top level, the same sheet as from floats."""
    images = cells(1, 2, 40, 60)
    as_float = labelled_grid(images, ["t = 0", "t = 1"])
    for dtype, peak in [(torch.uint8, 255), (torch.uint16, 65535)]:
        levels = (images * peak).round().to(dtype)
        sheet = labelled_grid(levels, ["t = 0", "t = 1"])
        assert sheet.dtype == dtype and sheet.shape == as_float.shape
        assert sheet[:, 0, 0].tolist() == [peak] * 3  # the label band is white
        assert (sheet.float() / peak - as_float).abs().max() <= 0.5 / peak + 1e-6
        assert sheet[:, :10].float().std() > 0  # the labels are drawn (dark text on white)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match=r"\(rows, cols, C, H, W\)"):
        labelled_grid(torch.rand(2, 3, 8, 8), ["a", "b"])
    with pytest.raises(ValueError, match=r"got list: one row of \(C, H, W\) images is torch.stack\(images\)\[None\]"):
        labelled_grid([torch.rand(3, 8, 8)], ["a"])
    with pytest.raises(ValueError, match="floats in .0, 1. or uint8 / uint16 levels, got torch.int64"):
        labelled_grid(torch.zeros(1, 1, 3, 8, 8, dtype=torch.int64), ["a"])
    with pytest.raises(ValueError, match="2 labels for 3 columns"):
        labelled_grid(cells(1, 3, 8, 8), ["a", "b"])


def test_an_extreme_sheet_keeps_its_aspect_and_many_labels_do_not_collide():
    wide = labelled_grid(torch.rand(1, 5, 3, 4, 20000), [f"t = {k}" for k in range(5)], max_side=16383)
    assert max(wide.shape[1:]) <= 16383
    cell_w = (wide.shape[2] - 4 * _layout(1, 5, 1, 1, 5)[0]) // 5
    assert 3200 < cell_w <= 3276  # 20000 x ~0.16: the same factor as the height's 4 -> 1 px rows, not distorted
    sheet = labelled_grid(cells(1, 16, 24, 120), [f"t = {k / 15:g}" for k in range(16)])  # "t = 0.0666667"
    band = sheet[0, :sheet.shape[1] - 24]
    gap = _layout(1, 16, 24, 120, 13)[0]
    for k in range(15):  # the white between two columns stays white: no label runs into its neighbour
        right_edge = k * (120 + gap) + 120
        assert band[:, right_edge - 1:right_edge + gap + 1].min() > 0.5, k


def test_cells_of_a_tiny_image_are_enlarged_until_their_labels_fit():
    """A sweep of a 7x5 photo (28x20 results): each pixel becomes a square of a whole
    factor, so that "t = 0.25" fits over its column and no label runs into the next."""
    images = cells(1, 5, 20, 28)
    labels = ["t = 0", "t = 0.25", "t = 0.5", "t = 0.75", "t = 1"]
    sheet = labelled_grid(images, labels)
    up = 3  # 8 characters x 8 px = 64 px: 28 x 3 = 84
    gap = _layout(1, 5, 20 * up, 28 * up, 8)[0]
    assert sheet.shape[2] == 5 * 28 * up + 4 * gap
    big = images[0, 1].repeat_interleave(up, -2).repeat_interleave(up, -1)
    assert torch.equal(sheet[:, -20 * up:, 28 * up + gap:2 * 28 * up + gap], big)
    band = sheet[0, :sheet.shape[1] - 20 * up]
    for k in range(4):
        right_edge = k * (28 * up + gap) + 28 * up
        assert band[:, right_edge - 1:right_edge + gap + 1].min() > 0.5, k
    one_pixel = labelled_grid(cells(1, 2, 4, 4), ["t = 0", "t = 1"])  # a 1x1 input at x4
    assert one_pixel.shape[2] == 2 * 40 + _layout(1, 2, 40, 40, 5)[0]


def test_transparency_is_shown_over_a_checkerboard():
    from oftsr.grid import on_checkerboard

    rgba = torch.zeros(1, 4, 16, 16)
    rgba[:, 0] = 1.0  # red colour everywhere, but only the left half visible
    rgba[:, 3, :, :8] = 1.0
    out = on_checkerboard(rgba, cell=4)
    assert out.shape == (1, 3, 16, 16)
    assert torch.equal(out[0, :, :, :8], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 16, 8))
    right = out[0, :, :, 8:]  # the filler colour hidden: light and dark gray cells of 4 px
    assert torch.equal(right[0], right[1]) and torch.allclose(right.unique(), torch.tensor([0.8, 1.0]))
    assert right[0, 0, 0] != right[0, 0, 4] and right[0, 0, 0] == right[0, 4, 4]
    half = on_checkerboard(torch.tensor([0.2, 0.5]).view(1, 2, 1, 1))  # gray + alpha: blended, three channels
    assert torch.allclose(half, torch.full((1, 3, 1, 1), 0.2 * 0.5 + 1.0 * 0.5))
    gray = torch.rand(2, 1, 5, 6)
    assert torch.equal(on_checkerboard(gray), gray.expand(-1, 3, -1, -1))


def test_readme_figure_script_shows_bicubic_and_the_student_at_each_t(tmp_path):
    # scripts/make_readme_figure.py as it is run: each cell is that result's crop, unscaled
    import subprocess
    import sys
    from pathlib import Path

    import oftsr
    from oftsr.images import load_image
    from oftsr.resample import resize

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "fig.png"
    subprocess.run([sys.executable, str(root / "scripts" / "make_readme_figure.py"), "--box", "8", "4", "40", "28",
                    "--t", "0", "1", "-o", str(out)], check=True, capture_output=True, cwd=tmp_path)
    sheet = load_image(out)[0][0]
    gap, _, width, height = _layout(1, 3, 96, 128, len("bicubic"))
    assert sheet.shape == (3, height, width)
    image = load_image(root / "assets" / "barn.png")[0][:, :3]
    model = oftsr.load_model("x4")
    expected = [resize(image, (384, 512)), oftsr.upscale(model, image, t=0), oftsr.upscale(model, image, t=1)]
    band = height - 96
    for k, result in enumerate(expected):
        cell = sheet[:, band:, k * (128 + gap):k * (128 + gap) + 128]
        assert (cell - result[0, :, 16:112, 32:160]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    t0, t1 = (sheet[:, band:, k * (128 + gap):k * (128 + gap) + 128] for k in (1, 2))
    assert (t0 - t1).abs().mean() > 2 / 255  # the slider changes the picture
