"""NegGrad+ forgets a whole class on digits at its defaults while the retain term keeps the other classes, and its
cost counts the forget batches it ascends on besides the retain batches."""

import unlearnkit as uk

RECIPE = uk.TrainConfig(epochs=15, batch_size=64, lr=0.05)


def test_neggrad_plus_forgets_a_class_and_keeps_the_rest(digits):
    original = uk.train(digits, "mlp", config=RECIPE, seed=0, device="cpu", model_options={"width": 64})
    request = uk.build_request("class:3", digits, seed=0)
    before = uk.evaluate(original.model, request, digits).metrics
    result = uk.unlearn(original.model, request, digits, method="neggrad_plus", device="cpu", recipe=RECIPE)
    after = uk.evaluate(result.model, request, digits).metrics
    assert before["UA"] < 5 and after["UA"] > 90  # the class is forgotten (forget accuracy < 10 %)
    assert after["RA"] > 85 and after["TA"] > 80  # the rest is kept
    # budget 0.15 of Retrain's 15 × |D_r| sample passes resolves to the 10 epochs the defaults were chosen at
    assert result.resolved["epochs"] == 10 and result.resolved["calibration_epochs"] == 0
    retain_passes = 10 * request.forget.numel()  # 10 epochs of |D_f| retain samples (retain_per_forget = 1)
    assert result.cost.backward == 2 * retain_passes
    # + the calibration's forget-accuracy probes of the original and of the result (|D_f| < probe_size)
    assert result.cost.forward == 2 * retain_passes + 2 * request.forget.numel()
