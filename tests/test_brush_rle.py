"""Our vectorised brush RLE encoder against the Label Studio SDK's reference encoder and decoder."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from backend.brush_rle import encode


@st.composite
def masks(draw):
    """Bool masks from 1x1 up, as random pixels, rectangles or nearly uniform fields."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return rng.random((h, w)) < draw(st.sampled_from([0.0, 0.01, 0.5, 0.99, 1.0]))


@settings(max_examples=200, deadline=None)
@given(masks())
def test_encode_gives_the_sdk_bytes(mask):
    assert encode(mask) == mask2rle(mask.astype(np.uint8) * 255)


def test_runs_longer_than_a_16_bit_field_split_as_the_sdk_splits_them():
    mask = np.zeros((300, 500), bool)  # a first run of 599,600 bytes: 9 full tokens and a rest
    mask[299, 400:] = True
    assert encode(mask) == mask2rle(mask.astype(np.uint8) * 255)
    square = np.ones((128, 128), bool)  # exactly 65,536 bytes: one full token, no rest
    assert encode(square) == mask2rle(square.astype(np.uint8) * 255)


def test_label_studio_decodes_the_mask_back():
    rows, cols = np.mgrid[:97, :131]
    mask = (rows - 50) ** 2 + (cols - 60) ** 2 < 35 ** 2
    rgba = decode_rle(encode(mask)).reshape(97, 131, 4)
    assert (rgba == (mask * 255)[..., None]).all()


def test_uint8_values_are_kept():
    labels = np.array([[0, 7, 7, 200], [200, 200, 0, 0]], np.uint8)
    assert encode(labels) == mask2rle(labels)
