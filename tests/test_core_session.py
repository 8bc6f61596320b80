"""The click-by-click session: modes, focus rounds, state round-trips, replay, undo, bad input."""
import math

import numpy as np
import pytest

from core_fixtures import ScriptedPredictor, blob_image, tiny_predictor
from focuscut_core import MODES, Click, InferenceConfig, Session, replay
from focuscut_core.clicks import next_robot_click


SMALL = dict(short_side=96, focus_size=96)  # small views keep these tests fast on 2 CPU cores


@pytest.fixture(scope="module")
def predictor():
    return tiny_predictor()


def robot_clicks(predictor, image, gt, n, mode):
    session = Session(predictor, image, InferenceConfig(mode=mode, **SMALL))
    clicked = np.zeros(gt.shape, bool)
    for _ in range(n):
        click = next_robot_click(session.mask, gt, clicked) or Click(1.5, 1.5, False)
        clicked[click.pixel()] = True
        session.add_click(click)
    return session


@pytest.mark.parametrize("mode", MODES)
def test_state_round_trip_continues_exactly(predictor, mode):
    image, gt = blob_image()
    full = robot_clicks(predictor, image, gt, 4, mode)
    clicks = full.clicks
    part = replay(predictor, image, clicks[:3], InferenceConfig(mode=mode, **SMALL))
    restored = Session.from_bytes(predictor, image, part.to_bytes())
    assert restored.clicks == clicks[:3]
    np.testing.assert_array_equal(restored.probabilities, part.probabilities)
    restored.add_click(clicks[3])
    np.testing.assert_array_equal(restored.probabilities, full.probabilities)
    np.testing.assert_array_equal(replay(predictor, image, clicks, InferenceConfig(mode=mode, **SMALL)).mask, full.mask)


def test_confidence_is_the_mean_probability_inside_the_mask():
    ramp = np.linspace(0.0, 1.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    session = Session(ScriptedPredictor(lambda x: ramp[:x.shape[1], :x.shape[2]]), np.zeros((48, 64, 3), np.uint8),
                      InferenceConfig(mode="global", short_side=48))
    assert session.confidence == 0.0
    session.add_click(Click(40.5, 60.5, True))
    inside = session.probabilities[session.mask]
    assert 0.5 <= inside.min() and session.confidence == pytest.approx(inside.mean(), abs=1e-6)
    assert session.confidence == pytest.approx(0.75, abs=0.01)  # the upper half of a 0..1 ramp


def test_undo_returns_previous_mask_also_after_restore(predictor):
    image, gt = blob_image()
    session = robot_clicks(predictor, image, gt, 3, "fast_pfs")
    before = replay(predictor, image, session.clicks[:2], InferenceConfig(**SMALL)).probabilities
    restored = Session.from_bytes(predictor, image, session.to_bytes())
    session.undo()
    restored.undo()
    np.testing.assert_array_equal(session.probabilities, before)
    np.testing.assert_array_equal(restored.probabilities, before)
    assert len(restored.clicks) == 2


def test_zero_clicks_is_an_empty_mask(predictor):
    session = Session(predictor, np.zeros((10, 12, 3), np.uint8))
    assert session.mask.shape == (10, 12) and not session.mask.any()
    assert not session.undo().any()


@pytest.mark.parametrize("bad", [Click(48, 3), Click(-1, 3), Click(3, 64), Click(math.nan, 2), Click(2, -math.inf)])
def test_bad_clicks_raise_and_leave_the_session_unchanged(predictor, bad):
    image, _ = blob_image()
    session = Session(predictor, image)
    session.add_click(Click(24, 32))
    state = session.to_bytes()
    with pytest.raises(ValueError):
        session.add_click(bad)
    assert session.to_bytes() == state


@pytest.mark.parametrize("image", [
    np.zeros((9, 300), np.uint8),  # grayscale, extreme aspect ratio
    np.zeros((31, 17, 4), np.uint8),  # RGBA, odd sizes
    np.full((40, 40, 3), 40000, np.uint16),  # 16-bit
    np.zeros((1, 1, 3), np.uint8),  # a single pixel
])
def test_any_image_works_with_border_clicks(predictor, image):
    h, w = image.shape[:2]
    session = Session(predictor, image, InferenceConfig(mode="pfs", **SMALL))
    session.add_click(Click(h - 1e-3, w - 1e-3, True))
    session.add_click(Click(0, 0, False))
    assert session.mask.shape == (h, w)


def test_state_for_another_image_is_refused(predictor):
    image, _ = blob_image()
    session = Session(predictor, image)
    session.add_click(Click(10, 10))
    with pytest.raises(ValueError):
        Session.from_bytes(predictor, image[:20], session.to_bytes())
    with pytest.raises(ValueError):
        Session.from_bytes(predictor, image, b"garbage")
    header = b'{"format": 1, "shape": [48, 64]}'  # parses, lacks fields
    with pytest.raises(ValueError):
        Session.from_bytes(predictor, image, len(header).to_bytes(4, "big") + header + b"x")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        InferenceConfig(mode="fastest")


def _prev_mask(x):
    return x[5]


def test_pfs_stops_after_one_round_when_the_patch_does_not_change():
    # The network returns its previous-mask channel: nothing ever changes, so PFS stops at round 1.
    pred = ScriptedPredictor(_prev_mask)
    image, _ = blob_image()
    session = Session(pred, image, InferenceConfig(mode="pfs", flip="none"))
    session.add_click(Click(24, 32))
    pred.calls.clear()
    session.add_click(Click(10, 10, False))
    assert len(session.focus_points) == 1
    assert pred.calls == [1, 1]  # the global view, then one focus round


def test_pfs_runs_t_rounds_while_the_patch_keeps_changing():
    # Global views (384 px) keep the previous mask, so the 2nd click always focuses; focus
    # crops (64 px) flip it, so every PFS round sees a change.
    pred = ScriptedPredictor(lambda x: 1.0 - x[5] if x.shape[1] == 64 else x[5])
    image, _ = blob_image(64, 96)
    session = Session(pred, image, InferenceConfig(mode="pfs", pfs_rounds=3, focus_size=64, flip="none"))
    session.add_click(Click(32, 32))
    pred.calls.clear()
    session.add_click(Click(40, 40, False))
    focus_calls = pred.calls[1:]
    assert len(session.focus_points) == 1
    assert focus_calls == [1, 1, 1]


def test_fast_pfs_runs_three_crops_per_focus_point_in_one_batch():
    pred = ScriptedPredictor(_prev_mask)
    image, _ = blob_image()
    session = Session(pred, image, InferenceConfig(mode="fast_pfs", flip="none"))
    session.add_click(Click(24, 32))
    session.add_click(Click(10, 10, False))
    pred.calls.clear()
    session.add_click(Click(40, 60, False))
    assert len(session.focus_points) == 2
    assert pred.calls == [1, 6]  # global view, then 2 points x 3 ranges in one call


@pytest.mark.parametrize("flip, calls", [("none", [1, 6]), ("global", [2, 6]), ("all", [2, 12])])
def test_flip_runs_the_chosen_views_twice(flip, calls):
    pred = ScriptedPredictor(_prev_mask)
    image, _ = blob_image()
    session = Session(pred, image, InferenceConfig(mode="fast_pfs", flip=flip))
    session.add_click(Click(24, 32))
    session.add_click(Click(10, 10, False))
    pred.calls.clear()
    session.add_click(Click(40, 60, False))
    assert len(session.focus_points) == 2 and pred.calls == calls
    with pytest.raises(ValueError, match="flip"):
        InferenceConfig(flip="both")


def test_global_mode_never_focuses():
    pred = ScriptedPredictor(_prev_mask)
    image, _ = blob_image()
    session = Session(pred, image, InferenceConfig(mode="global", flip="none"))
    for c in (Click(24, 32), Click(10, 10, False), Click(30, 30)):
        session.add_click(c)
    assert session.focus_points == [] and all(n == 1 for n in pred.calls)


def test_focus_patch_replaces_global_probabilities_inside_the_crop():
    # Global views (non-square inputs here) say 0.2 everywhere; focus crops (square) say 0.9.
    pred = ScriptedPredictor(lambda x: np.full(x.shape[1:], 0.9 if x.shape[1] == x.shape[2] == 384 else 0.2))
    image = np.zeros((100, 300, 3), np.uint8)
    session = Session(pred, image, InferenceConfig(mode="focus", min_radius=5))
    session.add_click(Click(50, 150))
    session.add_click(Click(50, 20, False))
    (row, col, radius), = session.focus_points
    probs = session.probabilities
    assert probs[row, col] == pytest.approx(0.9, abs=1 / 255)
    assert probs[max(0, row - radius):row + radius + 1, max(0, col - radius):col + radius + 1].min() == pytest.approx(0.9, abs=1 / 255)
    outside = np.ones(probs.shape, bool)
    outside[max(0, row - radius):row + radius + 1, max(0, col - radius):col + radius + 1] = False
    if outside.any():
        assert probs[outside].max() <= 0.2 + 1 / 255


def test_views_default_to_the_networks_training_crop_size():
    shapes = []

    def square_views_say_yes(x):  # focus crops (square) 0.9, global views 0.2: the click focuses
        shapes.append(x.shape[1:])
        return np.full(x.shape[1:], 0.9 if x.shape[1] == x.shape[2] else 0.2)

    pred = ScriptedPredictor(square_views_say_yes, input_size=64)
    image = np.zeros((100, 300, 3), np.uint8)
    session = Session(pred, image, InferenceConfig(mode="focus", min_radius=5))
    session.add_click(Click(50, 150))
    session.add_click(Click(50, 20, False))
    assert (session.config.short_side, session.config.focus_size) == (64, 64)
    assert shapes[0] == (64, 192) and shapes[-1] == (64, 64)  # the global view, then a focus crop
    explicit = Session(pred, image, InferenceConfig(short_side=96, focus_size=80))
    assert (explicit.config.short_side, explicit.config.focus_size) == (96, 80)


def _discs_at_positive_clicks(x):
    return (x[3] > 0.01).astype(np.float32)  # the positive click map: a disc around each click


# The global view is always the whole image (the Zoom-In box never shrinks), so what a click far
# from a focus point does to the global mask stays out of that point's crop.
WHOLE_VIEW = dict(mode="fast_pfs", zoom_min_ratio=2.0, short_side=192, focus_size=96, flip="none")  # one pass per view


def _focused_session(pred):
    image = np.zeros((200, 300, 3), np.uint8)
    session = Session(pred, image, InferenceConfig(**WHOLE_VIEW))
    session.add_click(Click(100.5, 40.5))
    session.add_click(Click(100.5, 52.5, False))  # next to the disc: a small focus range
    (row, col, radius), = session.focus_points
    assert radius < 20
    return image, session


def test_a_focus_point_whose_inputs_did_not_change_is_not_re_run():
    pred = ScriptedPredictor(_discs_at_positive_clicks)
    image, session = _focused_session(pred)
    pred.calls.clear()
    session.add_click(Click(100.5, 250.5))  # far away: the point's crop and its clicks are unchanged
    assert session.focus_runs == (1, 0) and pred.calls == [1]  # the global view only
    rerun = Session(pred, image, InferenceConfig(**WHOLE_VIEW))
    for click in session.clicks:
        rerun._focus_results.clear()  # what the session would give without reuse
        rerun.add_click(click)
    np.testing.assert_array_equal(session.probabilities, rerun.probabilities)


def test_a_click_reaching_a_focus_crop_re_runs_it():
    pred = ScriptedPredictor(_discs_at_positive_clicks)
    _, session = _focused_session(pred)
    pred.calls.clear()
    session.add_click(Click(90.5, 45.5, False))  # inside the first point's crop
    runs, stale = session.focus_runs
    assert stale == runs >= 1 and pred.calls[1] == 3 * stale


def test_a_restored_session_re_runs_its_focus_points_once_then_reuses_them():
    pred = ScriptedPredictor(_discs_at_positive_clicks)
    image, session = _focused_session(pred)
    restored = Session.from_bytes(pred, image, session.to_bytes())
    for s in (session, restored):
        s.add_click(Click(100.5, 250.5))
    assert session.focus_runs == (1, 0) and restored.focus_runs == (1, 1)
    np.testing.assert_array_equal(restored.probabilities, session.probabilities)
    restored.add_click(Click(150.5, 250.5))
    assert restored.focus_runs == (1, 0)
