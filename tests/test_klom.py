"""KLoM (KL divergence of margins) against hand computations on tiny banks, and through `evaluate`."""

import math

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.errors import UnlearnKitError
from unlearnkit.evaluation import evaluate, klom_bank, outputs_from_logits
from unlearnkit.klom import klom, klom_single, summary


def test_gaussian_klom_matches_the_closed_form_by_hand():
    # example 0: unlearned margins 1, 3 (mean 2, var 2); oracles 0, 2, 4 (mean 2, var 4)
    # example 1: unlearned 5, 5, 8 -> pad: use two models per side for a simple case
    unlearned = np.array([[1.0, 5.0], [3.0, 7.0]])
    oracles = np.array([[0.0, 0.0], [4.0, 2.0]])
    # ex 0: u ~ N(2, 2), o ~ N(2, 8): 0.5 (ln 4 + 2/8 - 1)
    # ex 1: u ~ N(6, 2), o ~ N(1, 2): 0.5 (0 + (2 + 25) / 2 - 1) = 6.25
    expected = [0.5 * (math.log(4) + 0.25 - 1), 6.25]
    assert klom(unlearned, oracles) == pytest.approx(expected)
    assert klom(oracles, oracles) == pytest.approx([0.0, 0.0])


def test_histogram_klom_matches_counting_by_hand():
    # one example, 2 bins over the pooled range [0, 1]: unlearned counts (2, 1), oracles (1, 2)
    unlearned = np.array([[0.0], [0.2], [1.0]])
    oracles = np.array([[0.0], [0.9], [1.0]])
    got = klom(unlearned, oracles, "histogram", bins=2, eps=0.0)
    assert got == pytest.approx([2 / 3 * math.log(2) + 1 / 3 * math.log(0.5)])
    # margins beyond ±clip are clipped first: 500 and 1000 land in the same bin
    assert klom([[0.0], [500.0]], [[0.0], [1000.0]], "histogram", bins=2, clip=100.0) == pytest.approx([0.0])


def test_single_model_klom_is_half_the_squared_z_score_under_the_bank():
    oracles = np.array([[0.0, 10.0], [2.0, 14.0]])  # means 1, 12; variances 2, 8; global variance 5
    got = klom_single([3.0, 12.0], oracles)
    assert got == pytest.approx([(3 - 1) ** 2 / (2 * 5), 0.0])
    with pytest.raises(UnlearnKitError):
        klom_single([1.0], [[1.0]])  # one oracle: no spread
    with pytest.raises(UnlearnKitError):
        klom([[1.0]], [[1.0], [2.0]], "nope")


def test_summary_reports_median_and_95th_percentile():
    s = summary(np.arange(101.0))
    assert s["median"] == 50.0 and s["p95"] == 95.0 and s["mean"] == 50.0


def test_evaluate_reports_klom_against_a_bank(tiny):
    request = uk.build_request("random:0.2", tiny, seed=0)
    gen = torch.Generator().manual_seed(0)
    y_train, y_test = request.training_labels(tiny), tiny.y_test

    def outputs():
        train = torch.randn(tiny.n_train, 4, generator=gen)
        return outputs_from_logits(train, torch.randn(len(y_test), 4, generator=gen), y_train, y_test)

    bank = klom_bank([outputs() for _ in range(3)], tiny, request)
    model = outputs()
    m = evaluate(model, request, tiny, bank=bank).metrics
    forget = request.forget.numpy()
    direct = klom_single(model.train_margin[forget], bank.train[:, forget])
    assert m["KLoM_forget_median"] == pytest.approx(float(np.median(direct)), abs=1e-6)
    assert m["KLoM_forget_p95"] == pytest.approx(float(np.percentile(direct, 95)), abs=1e-6)
    test = klom_single(model.test_margin, bank.test)
    assert m["KLoM_test_median"] == pytest.approx(float(np.median(test)), abs=1e-6)
    assert m["klom_bank"] == 3 and "KLoM_retain_p95" in m


def test_model_outputs_carry_margins_equal_to_the_logit_margin(tiny):
    trained = uk.train(tiny, "mlp", config=uk.TrainConfig(epochs=1, batch_size=50, lr=0.05), seed=0, device="cpu")
    request = uk.build_request("class:1", tiny, seed=0)
    out = uk.evaluation.model_outputs(trained.model, tiny, request, "cpu")
    logits = uk.training.predict_logits(trained.model, tiny.x_train, device="cpu").double()
    z_y = logits[torch.arange(tiny.n_train), tiny.y_train]
    others = logits.clone()
    others[torch.arange(tiny.n_train), tiny.y_train] = -math.inf
    assert out.train_margin == pytest.approx((z_y - torch.logsumexp(others, 1)).numpy(), abs=1e-5)
