"""fastladder.testing's comparison of detection lists: exact up to tolerances, except entries that
tie at a cut-off score."""
import pytest
import torch

from fastladder.testing import assert_same_detections


def detections(generator, n=200, labels=3):
    scores = torch.rand(n, generator=generator).sort(descending=True).values
    boxes = torch.rand(n, 4, generator=generator)
    return boxes, scores, torch.randint(1, labels + 1, (n,), generator=generator)


def check(actual, expected):
    assert_same_detections([actual], [expected], score_tol=1e-6, box_tol=1e-5, seed=0)


def test_identical_and_reordered_lists_pass(generator):
    boxes, scores, labels = detections(generator)
    check((boxes, scores, labels), (boxes, scores, labels))
    scores = scores.clone()
    scores[10:12] = scores[10]      # a tie inside the list: the two may come in either order
    order = torch.arange(200)
    order[10], order[11] = 11, 10
    check((boxes[order], scores[order], labels[order]), (boxes, scores, labels))


@pytest.mark.parametrize("where", [0, 100, 198])
def test_one_wrong_box_or_label_fails(generator, where):
    boxes, scores, labels = detections(generator)
    wrong = boxes.clone()
    wrong[where] += 0.01
    with pytest.raises(AssertionError, match="no counterpart"):
        check((wrong, scores, labels), (boxes, scores, labels))
    relabelled = labels.clone()
    relabelled[where] = labels[where] % 3 + 1
    with pytest.raises(AssertionError, match="no counterpart"):
        check((boxes, scores, relabelled), (boxes, scores, labels))


def test_a_different_entry_is_allowed_only_at_a_tied_cut_off(generator):
    boxes, scores, labels = detections(generator)
    scores = scores.clone()
    scores[-2:] = scores[-2]       # the last two tie: which of several tied boxes made the cut may differ
    other = boxes.clone()
    other[-1] = torch.rand(4, generator=generator)
    check((other, scores, labels), (boxes, scores, labels))
    # the same swap in the middle of the list (no cut there) is a wrong box
    scores[100:102] = scores[100]
    other = boxes.clone()
    other[101] = torch.rand(4, generator=generator)
    with pytest.raises(AssertionError, match="not at a tied cut-off score"):
        check((other, scores, labels), (boxes, scores, labels))
