"""Predictions and the comparison of two code paths' predictions."""

import pytest
import torch

from nemesis_analysis.metrics import differing_predictions, predict_classes, top1_accuracy


def test_predictions_and_accuracy():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert predict_classes(scores).tolist() == [0, 1, 0, 1]
    assert top1_accuracy(scores, torch.tensor([0, 1, 1, 1])) == 75.0


def test_only_float_ties_may_differ():
    scores = torch.tensor([[0.42, 0.42 + 3e-8, 0.1], [0.9, 0.1, 0.0]])  # row 0: a one-ulp tie
    assert differing_predictions(scores, torch.tensor([1, 0])) == 0
    assert differing_predictions(scores, torch.tensor([0, 0])) == 1  # the tie went the other way
    with pytest.raises(AssertionError, match="more than a float tie"):
        differing_predictions(scores, torch.tensor([1, 1]))  # 0.9 vs 0.1 is a real difference
