"""Label Studio's smart keypoints (percent) -> core clicks (pixels), and the labeling config."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.errors import RequestError
from backend.labeling import parse_context, parse_label_config, percent_to_pixels, to_clicks
from ls_payloads import CONFIG, keypoint


def _dot_percent(row: int, col: int, height: int, width: int) -> tuple[float, float]:
    """Where Label Studio puts a click on the centre of pixel (row, col): x, y in percent."""
    return (col + 0.5) / width * 100.0, (row + 0.5) / height * 100.0


@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (91, 121), (97, 13), (1001, 1)])
def test_clicks_on_drawn_dots_land_on_the_dots(height, width):
    """A dot drawn at each corner and the centre of an odd-sized image: the click LS sends for
    it (percent of the dot's centre) maps back onto the dot's pixel, at its centre."""
    spots = {(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1), (height // 2, width // 2)}
    for row, col in spots:
        image = np.zeros((height, width), np.uint8)
        image[row, col] = 255
        x, y = _dot_percent(row, col, height, width)
        context = {"result": [keypoint(x, y, "Cat", original_size=(width, height))]}
        click, = to_clicks(parse_context(context).points, height, width)
        assert image[click.pixel()] == 255
        assert click.y == pytest.approx(row + 0.5, abs=1e-9) and click.x == pytest.approx(col + 0.5, abs=1e-9)


@pytest.mark.parametrize("size", [1, 2, 91, 4000])
def test_the_image_edges_land_on_the_first_and_last_pixels(size):
    assert percent_to_pixels(0.0, size) == 0.0
    last = percent_to_pixels(100.0, size)
    assert last < size and math.floor(last) == size - 1


@given(size=st.integers(1, 20000), data=st.data())
def test_every_pixel_centre_round_trips(size, data):
    index = data.draw(st.integers(0, size - 1))
    px = percent_to_pixels((index + 0.5) / size * 100.0, size)
    assert math.floor(px) == index and abs(px - (index + 0.5)) < 1e-6


def test_negative_clicks_and_missing_flags():
    result = [keypoint(10, 20, "Cat"), keypoint(30, 40, "Cat", positive=False),
              keypoint(50, 60, "Cat", positive=True), keypoint(70, 80, "Cat", positive=None)]
    clicked = parse_context({"result": result})
    assert [p.is_positive for p in clicked.points] == [True, False, True, True]
    assert clicked.label == "Cat" and clicked.keypoint_tag == "tag2" and clicked.image == "image"


def test_only_the_clicked_labels_keypoints_count():
    result = [keypoint(10, 20, "Dog"), keypoint(30, 40, "Cat"), keypoint(50, 60, "Cat")]
    clicked = parse_context({"result": result})
    assert clicked.label == "Cat" and [(p.x, p.y) for p in clicked.points] == [(30, 40), (50, 60)]


@pytest.mark.parametrize("context", [None, {}, {"result": []}, {"result": [{"type": "rectanglelabels", "value": {}}]}])
def test_no_keypoints_means_no_clicks(context):
    assert parse_context(context) is None


@pytest.mark.parametrize("x,y,status", [(100.01, 5, 422), (-0.5, 5, 422), (5, float("nan"), 422),
                                        (float("inf"), 5, 422), ("50", 5, 400), (None, 5, 400), (True, 5, 400)])
def test_bad_coordinates_are_refused(x, y, status):
    item = keypoint(1, 1, "Cat")
    item["value"].update(x=x, y=y)
    with pytest.raises(RequestError) as err:
        parse_context({"result": [item]})
    assert err.value.status == status


def test_config_names_come_from_the_config():
    xml = CONFIG.replace('name="tag"', 'name="masks"').replace('name="image"', 'name="photo"').replace(
        'toName="image"', 'toName="photo"').replace("$image", "$img")
    config = parse_label_config(xml)
    assert config.images == {"photo": "img"}
    assert config.brush_for("photo", "Dog").name == "masks"
    with pytest.raises(RequestError):
        config.brush_for("photo", "Horse")


@pytest.mark.parametrize("xml,status", [
    ("<View><Image name='image' value='$image'/>", 400),
    ("", 400),
    ("<View><Image name='image' value='$image'/></View>", 422),
    ("<View><BrushLabels name='b' toName='t'><Label value='A'/></BrushLabels><Text name='t' value='$t'/></View>", 422),
])
def test_unusable_configs_are_refused(xml, status):
    with pytest.raises(RequestError) as err:
        parse_label_config(xml)
    assert err.value.status == status
