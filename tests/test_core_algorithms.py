"""Algorithms 2 and 3, views, click maps, the robot user and the metrics, on tiny hand-made arrays."""
import math

import numpy as np
import pytest

from focuscut_core.clicks import Click, click_maps, next_robot_click, validate_clicks
from focuscut_core.focus import distance_to_other_class, fast_pfs_radii, focus_decision, progressive_radius
from focuscut_core.metrics import assd, boundary_iou, iou, noc
from focuscut_core.views import (PAD_RGB, as_rgb_uint8, box_iou, crop_square, mask_box, nearest_square, resize,
                                 resize_window, resized_square, short_side_size, square_overlap, zoom_in_box)


# --- Algorithm 2 ------------------------------------------------------------------------
def _two_objects():
    prev = np.zeros((20, 20), bool)
    prev[10:, :] = True  # 200 px object
    mask = prev.copy()
    mask[5:8, 5:8] = True  # a 9 px blob appears
    return prev, mask


def test_algorithm2_small_changed_region_focuses_with_its_extent():
    prev, mask = _two_objects()
    # |A| = 9 < 0.2 * 209; r~ = max Chebyshev distance from (6, 6) to the blob = 1; r = 1.75 -> 2
    d = focus_decision(prev, mask, (6, 6), min_radius=0)
    assert d.focus and d.radius == 2
    d = focus_decision(prev, mask, (5, 5), min_radius=0)  # corner of the blob: r~ = 2, r = 3.5 -> 4
    assert d.focus and d.radius == 4
    assert focus_decision(prev, mask, (6, 6)).radius == 5  # the 5 px floor


def test_algorithm2_large_changed_region_does_not_focus():
    prev = np.zeros((20, 20), bool)
    mask = prev.copy()
    mask[:10, :10] = True  # the whole object is new: |A| = 100 >= 0.2 * 100
    d = focus_decision(prev, mask, (0, 0), min_radius=0)
    assert not d.focus
    assert d.radius == round(1.75 * 9)


def test_algorithm2_unchanged_click_focuses_at_distance_to_previous_boundary():
    prev = np.zeros((20, 20), bool)
    prev[:10, :] = True
    d = focus_decision(prev, prev.copy(), (3, 10), min_radius=0)  # nearest background: row 10
    assert d.focus and d.radius == round(1.75 * 7)
    assert distance_to_other_class(prev, (3, 10)) == 7
    assert distance_to_other_class(prev, (12, 0)) == 3


def test_distance_to_other_class_without_boundary_is_farthest_corner():
    assert distance_to_other_class(np.zeros((7, 30), bool), (2, 4)) == 25


def test_distance_to_other_class_far_away_is_exact():
    mask = np.zeros((300, 300), bool)
    mask[290, 3] = True
    assert distance_to_other_class(mask, (10, 10)) == 280


# --- Algorithm 3 ------------------------------------------------------------------------
def test_pfs_stops_without_change():
    patch = np.zeros((21, 21), bool)
    assert progressive_radius(patch, patch.copy(), 10, 10, erode_px=2) == 0


def test_pfs_stops_when_erosion_removes_the_change():
    prev = np.zeros((21, 21), bool)
    now = prev.copy()
    now[3, 2:19] = True  # a 1-px line vanishes under a 2-px erosion
    assert progressive_radius(prev, now, 10, 10, erode_px=2) == 0


def test_pfs_new_range_from_eroded_change():
    prev = np.zeros((21, 21), bool)
    now = prev.copy()
    now[2:9, 2:9] = True  # eroded by 2 px: rows/cols 4..6; farthest from centre (10, 10) is 6
    assert progressive_radius(prev, now, 10, 10, erode_px=2) == round(1.1 * 6)


def test_pfs_range_is_kept_within_bounds():
    prev = np.zeros((41, 41), bool)
    now = prev.copy()
    now[:, :] = True  # change everywhere: 1.1 * 20 > 20 -> capped at the current range
    assert progressive_radius(prev, now, 20, 20, erode_px=2) == 20
    now2 = prev.copy()
    now2[17:24, 17:24] = True  # eroded change at the centre only -> floor 0.2 * first range
    assert progressive_radius(prev, now2, 20, 100, erode_px=2) == 20
    assert progressive_radius(prev, now2, 30, 50, erode_px=2) == 10


def test_fast_pfs_radii_shrink_by_08():
    assert fast_pfs_radii(100) == [100, 80, 64]
    assert fast_pfs_radii(2, min_radius=2) == [2, 2, 2]


# --- views ------------------------------------------------------------------------------
def test_crop_square_pads_at_borders():
    a = np.arange(25).reshape(5, 5)
    np.testing.assert_array_equal(crop_square(a, 0, 0, 1, fill=-1), [[-1, -1, -1], [-1, 0, 1], [-1, 5, 6]])
    np.testing.assert_array_equal(crop_square(a, 4, 4, 1, fill=-1), [[18, 19, -1], [23, 24, -1], [-1, -1, -1]])
    assert crop_square(a, 2, 2, 4, fill=-1).shape == (9, 9)
    assert (crop_square(a, 20, 20, 1, fill=-1) == -1).all()


def test_crop_square_without_copy_views_inner_squares_only():
    a = np.arange(25).reshape(5, 5)
    inner = crop_square(a, 2, 2, 1, copy=False)
    np.testing.assert_array_equal(inner, [[6, 7, 8], [11, 12, 13], [16, 17, 18]])
    assert np.shares_memory(inner, a) and not inner.flags.writeable
    border = crop_square(a, 0, 0, 1, fill=-1, copy=False)
    np.testing.assert_array_equal(border, crop_square(a, 0, 0, 1, fill=-1))
    assert not np.shares_memory(border, a)


def test_square_overlap_pastes_back_where_it_was_cut():
    image = np.random.default_rng(0).random((7, 9))
    patch = crop_square(image, 6, 0, 2, fill=np.nan)
    out = np.zeros_like(image)
    src, dst = square_overlap(image.shape, 6, 0, 2)
    out[src] = patch[dst]
    np.testing.assert_array_equal(out[4:7, 0:3], image[4:7, 0:3])
    assert out.sum() == pytest.approx(image[4:7, 0:3].sum())


def test_nearest_square_samples_as_resizing_the_padded_crop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random((int(rng.integers(1, 120)), int(rng.integers(1, 120)))) < 0.5
        row, col = int(rng.integers(0, mask.shape[0])), int(rng.integers(0, mask.shape[1]))
        radius, size = int(rng.integers(0, 300)), int(rng.choice([16, 64, 100]))
        crop = crop_square(mask, row, col, radius, False).astype(np.uint8)
        np.testing.assert_array_equal(nearest_square(mask, row, col, radius, size),
                                      resize(crop, size, size, nearest=True).astype(bool))


def test_resize_window_is_the_window_of_the_whole_resize():
    rng = np.random.default_rng(1)
    for _ in range(100):
        small = rng.random((int(rng.integers(2, 40)), int(rng.integers(2, 40)))).astype(np.float32)
        height, width = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        r0, c0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        rows = slice(r0, int(rng.integers(r0 + 1, min(height, r0 + 60) + 1)))  # small windows: computed alone
        cols = slice(c0, int(rng.integers(c0 + 1, min(width, c0 + 60) + 1)))
        np.testing.assert_allclose(resize_window(small, height, width, rows, cols),
                                   resize(small, height, width)[rows, cols], atol=1e-5)


def test_resized_square_matches_resizing_the_padded_crop_up_to_rounding():
    rng = np.random.default_rng(2)
    for _ in range(60):
        image = rng.integers(0, 256, (int(rng.integers(5, 150)), int(rng.integers(5, 150)), 3)).astype(np.uint8)
        row, col = int(rng.integers(0, image.shape[0])), int(rng.integers(0, image.shape[1]))
        radius, size = int(rng.integers(1, 250)), int(rng.choice([16, 32, 50]))
        expected = resize(crop_square(image, row, col, radius, PAD_RGB), size, size).astype(int)
        got = resized_square(image, row, col, radius, size, PAD_RGB)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - expected).max() <= 1


def test_zoom_in_box_by_hand():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 90:130] = True  # bh 20, bw 40: side max(40 + 8, 0.5 * 100) = 50, centred on (50, 110)
    assert zoom_in_box(mask, [], None) == (25, 85, 75, 135)
    previous = (20, 80, 80, 140)  # IoU 2500 / 3600 >= 0.5 and holds the clicks: kept
    assert zoom_in_box(mask, [(50, 100)], previous) == previous
    assert zoom_in_box(mask, [(5, 5)], previous) != previous  # a click outside it: a new box


def test_zoom_in_box_is_clipped_into_the_image():
    mask = np.zeros((100, 200), bool)
    mask[0:10, 190:200] = True
    y0, x0, y1, x1 = zoom_in_box(mask, [], None)
    assert (y0, y1) == (0, 50) and (x0, x1) == (150, 200)
    assert zoom_in_box(np.zeros((10, 10), bool), [], None) == (0, 0, 10, 10)


def test_box_helpers():
    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    assert mask_box(m) == (1, 2, 3, 5)
    assert mask_box(np.zeros((3, 3), bool)) is None
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert short_side_size(300, 600, 384) == (384, 768)
    assert short_side_size(10, 3000, 384, max_long_side=1280) == (8, 1280)


def test_as_rgb_uint8_accepts_gray_rgba_16bit_float():
    assert as_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_uint8(np.full((4, 5, 3), 65535, np.uint16)).max() == 255
    assert as_rgb_uint8(np.full((4, 5, 1), 1.0, np.float32)).min() == 255
    for bad in (np.zeros((4, 5, 2)), np.zeros((0, 5, 3)), np.zeros(5), np.full((2, 2), np.nan)):
        with pytest.raises(ValueError):
            as_rgb_uint8(bad)


# --- clicks -----------------------------------------------------------------------------
def test_click_maps_are_gaussians_with_fwhm_sigma():
    maps = click_maps([Click(5.5, 5.5, True)], 11, 11)
    assert maps.shape == (2, 11, 11)
    assert maps[0, 5, 5] == pytest.approx(1.0)
    assert maps[0, 5, 10] == pytest.approx(0.5)  # 5 px away = half of the 10 px FWHM
    assert maps[1].max() == 0
    neg = click_maps([Click(0.5, 0.5, False), Click(10.5, 10.5, False)], 11, 11)
    assert neg[1, 0, 0] == pytest.approx(1.0) and neg[1, 10, 10] == pytest.approx(1.0)


def test_click_maps_scale_and_offset_to_view_pixels():
    # image point (20.5, 30.5) in a view starting at (10, 20) with scale 0.5 lands on view pixel (5, 5)
    maps = click_maps([Click(20.5, 30.5, True)], 11, 11, 0.5, 0.5, 10.0, 20.0)
    assert np.unravel_index(maps[0].argmax(), (11, 11)) == (5, 5)


def test_clicks_hold_plain_numbers_so_numpy_scalars_give_the_same_maps():
    click = Click(np.float64(10.5), np.float32(20.5), np.bool_(False))
    assert type(click.y) is float and type(click.x) is float and type(click.is_positive) is bool
    plain = Click(10.5, 20.5, False)
    assert click == plain
    np.testing.assert_array_equal(click_maps([click], 32, 48, 0.37, 0.41, 0.0, 0.0),
                                  click_maps([plain], 32, 48, 0.37, 0.41, 0.0, 0.0))


def test_validate_clicks():
    validate_clicks([Click(0, 0), Click(9.99, 4.99)], 10, 5)
    for bad in (Click(10, 0), Click(-0.1, 0), Click(0, 5), Click(math.nan, 1), Click(1, math.inf)):
        with pytest.raises(ValueError):
            validate_clicks([bad], 10, 5)


def test_robot_clicks_deepest_false_negative_first_in_row_major():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :5] = 255
    assert next_robot_click(np.zeros((10, 10), bool), gt) == Click(2.5, 2.5, True)


def test_robot_tie_goes_negative():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :5] = 255
    pred = np.zeros((10, 10), bool)
    pred[:, 5:] = True  # mirror images: equal depths
    assert next_robot_click(pred, gt) == Click(2.5, 7.5, False)


def test_robot_skips_clicked_and_ignored_pixels():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :5] = 255
    clicked = np.zeros((10, 10), bool)
    clicked[2, 2] = True
    assert next_robot_click(np.zeros((10, 10), bool), gt, clicked) == Click(3.5, 2.5, True)
    ignored = np.full((6, 6), 128, np.uint8)
    assert next_robot_click(np.ones((6, 6), bool), ignored) is None
    assert next_robot_click(gt == 255, gt) is None


# --- metrics ----------------------------------------------------------------------------
def test_iou_ignores_128():
    gt = np.array([[255, 255, 255, 128, 0]], np.uint8)
    pred = np.array([[True, True, False, True, False]])
    assert iou(pred, gt) == pytest.approx(2 / 3)
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), np.uint8)) == 1.0


def test_boundary_iou_by_hand():
    gt = np.zeros((20, 20), np.uint8)
    gt[:10] = 255
    pred = np.zeros((20, 20), bool)
    pred[:11] = True  # bands of 1 px: 56 and 58 px sharing 38
    assert boundary_iou(pred, gt) == pytest.approx(38 / 76)
    assert boundary_iou(gt == 255, gt) == 1.0


def test_assd_by_hand():
    gt = np.zeros((10, 10), np.uint8)
    gt[5, 2:8] = 255
    pred = np.zeros((10, 10), bool)
    pred[7, 2:8] = True
    assert assd(pred, gt) == pytest.approx(2.0)
    assert assd(gt == 255, gt) == 0.0
    assert assd(np.zeros((10, 10), bool), gt) == pytest.approx(math.hypot(10, 10))


def test_noc():
    assert noc([0.5, 0.86, 0.91], 0.85) == 2
    assert noc([0.5, 0.86, 0.91], 0.90) == 3
    assert noc([0.5, 0.86, 0.91], 0.95, max_clicks=20) == 20
    assert noc([0.95] * 30, 0.9, max_clicks=20) == 1
