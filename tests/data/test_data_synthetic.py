import re

import numpy as np
import pytest

from megatron_sail.data.records.synthetic import BACKGROUND, COLOURS, QUESTIONS, corpus, make_sample

_PART = re.compile(r"a (\w+) (\w+) (in the center|on the left|on the right|at the top|at the bottom)")


def _cell(place: str, size: int) -> tuple[slice, slice]:
    """(rows, cols) of the image region a position phrase refers to."""
    half = size // 2
    full = slice(0, size)
    return {
        "in the center": (full, full),
        "on the left": (full, slice(0, half)),
        "on the right": (full, slice(half, size)),
        "at the top": (slice(0, half), full),
        "at the bottom": (slice(half, size), full),
    }[place]


def _classify(mask: np.ndarray) -> str:
    """Shape name from a boolean mask tightly containing one solid shape."""
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    corners = (box[0, 0], box[0, -1], box[-1, 0], box[-1, -1])
    fill = box.mean()
    if all(corners) and fill > 0.97:
        return "square"
    if not any(corners) and 0.7 < fill < 0.9:
        return "circle"
    if corners == (False, False, True, True) and 0.4 < fill < 0.7:
        return "triangle"
    raise AssertionError(f"unrecognisable shape: corners={corners} fill={fill:.2f}")


def _check_answer_matches_image(image: np.ndarray, answer: str) -> None:
    size = image.shape[0]
    parts = _PART.findall(answer)
    assert answer == " and ".join(f"a {c} {s} {p}" for c, s, p in parts) + "."
    assert len(parts) in (1, 2)
    assert len({c for c, _, _ in parts}) == len(parts), "colours must be distinct"
    described = np.zeros(image.shape[:2], dtype=bool)
    for colour, shape, place in parts:
        rows, cols = _cell(place, size)
        cell = image[rows, cols]
        is_colour = (cell == COLOURS[colour]).all(-1)
        is_background = (cell == BACKGROUND).all(-1)
        # The region holds exactly the described shape on plain background.
        ys, xs = np.nonzero(is_colour)
        assert len(ys) > 0, f"no {colour} pixels {place} for {answer!r}"
        # Big enough to recognise: at least half the region's short side.
        extent = min(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert extent >= 0.5 * min(cell.shape[:2]), f"{colour} {shape} too small in {answer!r}"
        assert (is_colour | is_background).all(), f"stray pixels in the {place} region for {answer!r}"
        assert _classify(is_colour) == shape, answer
        described[rows, cols] |= is_colour
    # Nothing is drawn outside the described shapes.
    assert ((image == BACKGROUND).all(-1) | described).all()


@pytest.mark.parametrize("image_size", [56, 64, 112])
def test_answer_describes_the_image(image_size: int) -> None:
    for index in range(150):
        sample = make_sample(7, index, image_size)
        assert sample.image.shape == (image_size, image_size, 3) and sample.image.dtype == np.uint8
        _check_answer_matches_image(sample.image, sample.answer)


def test_samples_cover_all_layouts_colours_shapes_questions() -> None:
    answers = [make_sample(0, i, 56).answer for i in range(400)]
    questions = {make_sample(0, i, 56).question for i in range(400)}
    text = " ".join(answers)
    for word in [*COLOURS, "circle", "square", "triangle", "center", "left", "right", "top", "bottom"]:
        assert word in text
    assert any(" and " in a for a in answers) and any(" and " not in a for a in answers)
    assert questions == set(QUESTIONS)


def test_deterministic_in_seed_and_index_only() -> None:
    np.random.seed(0)
    a = make_sample(3, 11, 56)
    np.random.seed(12345)
    np.random.random(100)
    b = make_sample(3, 11, 56)
    assert np.array_equal(a.image, b.image) and (a.question, a.answer) == (b.question, b.answer)
    others = [make_sample(3, 12, 56), make_sample(4, 11, 56)]
    assert all(not np.array_equal(a.image, o.image) for o in others)


def test_corpus_contains_everything_emitted() -> None:
    texts = corpus()
    assert len(texts) == len(set(texts))
    assert texts == corpus()
    known = set(texts)
    for i in range(500):
        sample = make_sample(1, i, 32)
        assert sample.question in known and sample.answer in known


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="image_size"):
        make_sample(0, 0, 8)
    with pytest.raises(ValueError, match="non-negative"):
        make_sample(-1, 0, 56)
