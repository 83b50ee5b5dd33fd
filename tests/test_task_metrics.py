"""GLUE / SuperGLUE metrics and their postprocessors against values worked out by hand."""

import pytest

from tasks import metrics
from tasks import postprocessors


def test_f1_counts_invalid_predictions_as_wrong():
  # Targets 1 1 0 0 1, predictions 1 0 1 0 -1 (the -1 becomes 0: a miss).
  # TP = 1, FP = 1, FN = 2: F1 = 2*1 / (2*1 + 1 + 2) = 0.4.
  assert metrics.f1([1, 1, 0, 0, 1], [1, 0, 1, 0, -1]) == pytest.approx({'f1': 40.0})
  assert metrics.f1([0, 0], [0, 0]) == {'f1': 0.0}


def test_mean_class_f1():
  # Class 0: TP 1, FP 1, FN 0 -> 2/3. Class 1: TP 1, FP 0, FN 1 -> 2/3. Class 2: TP 0,
  # FP 0, FN 1 (its target got -1) -> 0. Mean 4/9.
  result = metrics.mean_class_f1(3)([0, 1, 1, 2], [0, 1, 0, -1])
  assert result == pytest.approx({'mean_3class_f1': 400 / 9})


def test_matthews_corrcoef():
  # TP 2, TN 1, FP 1, FN 1: (2*1 - 1*1) / sqrt(3 * 3 * 2 * 2) = 1/6.
  result = metrics.matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
  assert result == pytest.approx({'matthews_corrcoef': 100 / 6})
  assert metrics.matthews_corrcoef([1, 1], [1, 1]) == {'matthews_corrcoef': 0.0}
  # Three classes, all right: 1.
  assert metrics.matthews_corrcoef([0, 1, 2], [0, 1, 2]) == pytest.approx(
      {'matthews_corrcoef': 100.0})


def test_pearson_and_spearman():
  # y = 2x + 1 exactly: Pearson 1. Ranks (1, 2, 3) vs (1, 3, 2): Spearman 1 - 6*2/(3*8) = 0.5.
  assert metrics.pearson_corrcoef([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx(
      {'pearson_corrcoef': 100.0})
  assert metrics.spearman_corrcoef([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(
      {'spearman_corrcoef': 50.0})
  # Pearson of (1, 2, 3) and (1, 3, 2): covariance 1/2 over variances 1 and 1 -> 0.5.
  assert metrics.pearson_corrcoef([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(
      {'pearson_corrcoef': 50.0})


def test_multirc_groups_answers_by_question():
  example = lambda paragraph, question: {'idx/paragraph': paragraph, 'idx/question': question}
  # Question (0, 0) has answers 1, 0; question (0, 1) has 1; question (1, 0) has 0, 1.
  texts = [('True', 'True', (0, 0)), ('False', 'False', (0, 0)), ('True', 'False', (0, 1)),
           ('False', 'False', (1, 0)), ('True', 'maybe', (1, 0))]
  targets = [postprocessors.multirc(t, example(*g), is_target=True) for t, _, g in texts]
  predictions = [postprocessors.multirc(p) for _, p, _ in texts]
  # Only question (0, 0) is all right: EM 1/3. Over answers TP 1, FP 0, FN 2: F1 2/4.
  assert metrics.multirc_exact_match(targets, predictions) == pytest.approx(
      {'exact_match': 100 / 3})
  assert metrics.multirc_f1(targets, predictions) == pytest.approx({'f1': 50.0})


def test_gender_parity_counts_pairs_with_the_same_prediction():
  # Pairs a: 0 0 (agree, right), b: 1 0 (disagree), c: -1 -1 (agree, both invalid),
  # d: 1 1 (agree, wrong): 3 of 4 pairs agree.
  groups = ['a', 'a', 'b', 'b', 'c', 'c', 'd', 'd']
  predicted = [0, 0, 1, 0, -1, -1, 1, 1]
  targets = [{'value': 0, 'group': group} for group in groups]
  predictions = [{'value': value} for value in predicted]
  assert metrics.gender_parity(targets, predictions) == {'gender_parity': 75.0}
  # Accuracy on the values: right at 0, 1, 3 -> 3/8.
  assert metrics.on_values(metrics.accuracy)(targets, predictions) == {'accuracy': 37.5}


def test_record_scores_each_query_once_with_its_best_answer():
  example = lambda answers, passage, query: {'answers': [a.encode() for a in answers],
                                             'idx/passage': passage, 'idx/query': query}
  first = example(['Barack Obama', 'Obama'], 0, 0)
  second = example(['New York City'], 0, 1)
  targets = [postprocessors.record(b'', first, is_target=True),
             postprocessors.record(b'', first, is_target=True),
             postprocessors.record(b'', second, is_target=True)]
  predictions = [postprocessors.record(p) for p in (b'the Obama!', b'the Obama!', b'York')]
  # Query 1: 'obama' equals the normalised 'Obama': EM 1, F1 1 (its copy is not counted).
  # Query 2: 'york' vs 'new york city': EM 0, F1 = 2 * (1/1 * 1/3) / (1 + 1/3) = 0.5.
  assert metrics.record_exact_match_and_f1(targets, predictions) == pytest.approx(
      {'em': 50.0, 'f1': 75.0})


def test_metrics_refuse_mismatched_lengths():
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.f1([0, 1], [0])
