"""Backdoor metrics on hand-made predictions."""

import pytest
import torch
from torch import nn

from upgp.metrics import auroc, der, redirection, roc, struck_out_ra, target_class_accuracy


class AlwaysClass(nn.Module):
    """Predicts class ``c`` for every input (one learnable logit vector)."""

    def __init__(self, c: int, num_classes: int = 3) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(c), num_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_target_class_accuracy_splits_the_target_class_off():
    x = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert target_class_accuracy(AlwaysClass(0), x, y, 0, bf16=False) == {
        "acc_target_class": 100.0, "acc_other_classes": 0.0}
    assert target_class_accuracy(AlwaysClass(1), x, y, 0, bf16=False) == pytest.approx({
        "acc_target_class": 0.0, "acc_other_classes": 50.0})


def test_struck_out_ra_takes_the_best_label_besides_each_images_backdoor_label():
    model = AlwaysClass(0)  # logits (1, 0, 0): label 0, then 1 (ties go to the lower label)
    x = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    y, backdoor = torch.tensor([1, 1, 2, 0]), torch.tensor([0, 0, 0, 1])
    # struck out: 1, 1, 1, 0 -> right on images 0, 1 and 3
    assert struck_out_ra(model, x, y, backdoor, bf16=False) == pytest.approx(75.0)
    assert struck_out_ra(AlwaysClass(2), x, y, torch.tensor([2, 2, 2, 2]), bf16=False) == 25.0


@pytest.mark.parametrize("levels", [1000, 7])  # distinct scores, and many ties
def test_auroc_and_roc_agree_with_scikit_learn(levels):
    from sklearn.metrics import roc_auc_score, roc_curve

    gen = torch.Generator().manual_seed(levels)
    truth = torch.rand(400, generator=gen) < 0.2
    suspicion = torch.randint(0, levels, (400,), generator=gen).float() + 2.0 * truth
    assert auroc(truth, suspicion) == pytest.approx(roc_auc_score(truth.numpy(), suspicion.numpy()))
    fpr, tpr, _ = roc_curve(truth.numpy(), suspicion.numpy(), drop_intermediate=False)
    ours = roc(truth, suspicion)
    assert ours[0] == pytest.approx(fpr) and ours[1] == pytest.approx(tpr)
    assert auroc(torch.ones(5, dtype=torch.bool), torch.rand(5)) != auroc(truth, suspicion)  # nan


def test_der_counts_only_asr_gain_and_acc_loss():
    assert der({"acc": 90, "asr": 100}, {"acc": 80, "asr": 0}) == pytest.approx(95.0)
    assert der({"acc": 80, "asr": 10}, {"acc": 90, "asr": 20}) == pytest.approx(50.0)


def test_redirection_names_the_largest_class_besides_the_target():
    assert redirection([50, 10, 30, 10], target=0) == (2, pytest.approx(30.0))
    assert redirection([5, 80, 10, 5], target=1) == (2, pytest.approx(10.0))


def test_backdoor_rates_and_metrics_agree_on_hand_made_predictions():
    from upgp.metrics import backdoor_metrics, backdoor_rates

    y_test, y_trig = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 2, 1, 2])
    rates = backdoor_rates(torch.tensor([0, 1, 0, 2]), y_test, torch.tensor([0, 2, 0, 0]), y_trig, 0)
    assert rates == pytest.approx({"acc": 75.0, "asr": 75.0, "ra": 25.0})
    x = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    assert backdoor_metrics(AlwaysClass(2), x, y_test, x, y_trig, 0, bf16=False) == pytest.approx(
        {"acc": 50.0, "asr": 0.0, "ra": 50.0})


def test_scorecard_bars_and_summary():
    import pandas as pd

    from upgp.scorecard import BARS, bar_summary, defense_row, with_bars

    result = {"before": {"acc": 80.0, "asr": 95.0, "ra": 4.0},
              "after": {"acc": 77.5, "asr": 5.0, "ra": 74.0},
              "detection": {"flagged": 10, "precision": 0.9, "recall": 1.0},
              "upgp": {"removal_steps": 40, "removal_stop": "step budget"}}
    rows = [{"arch": "a", **defense_row(result, clean_ra=78.0)},
            {"arch": "a", **defense_row({**result, "after": {"acc": 79.0, "asr": 5.5, "ra": 76.0}},
                                        clean_ra=82.0)}]
    table = with_bars(pd.DataFrame(rows))
    assert rows[0]["repair steps"] == 0 and rows[0]["rounds"] == 1  # a four-step run
    assert list(table["ACC drop"]) == [2.5, 1.0]
    assert list(table["ASR <= 5"]) == [True, False]  # the bars are inclusive
    assert list(table["ACC drop <= 2"]) == [False, True]
    assert list(table["RA >= 75"]) == [False, True]
    assert list(table["RA >= clean RA - 5"]) == [True, False]  # 74 >= 73; 76 < 77
    summary = bar_summary(table, ["arch"])
    assert summary.loc["a", "pairs"] == 2 and summary.loc["a", "acc_drop"] == 1.75
    assert [summary.loc["a", short] for short in BARS.values()] == [1, 1, 1, 1]


def test_projection_arms_and_paired_counts_compare_two_arms_model_by_model():
    import pandas as pd

    from upgp.method import UPGPConfig
    from upgp.scorecard import paired_counts, projection_arms, with_bars

    def result_of(config):  # the unprojected arm ends with less ACC and more ASR
        projected = config.projection != "none"
        return {"before": {"acc": 80.0, "asr": 95.0, "ra": 4.0},
                "after": {"acc": 79.0 if projected else 77.0, "asr": 1.0 if projected else 3.0,
                          "ra": 70.0},
                "detection": {"flagged": 10, "precision": 0.9, "recall": 1.0},
                "upgp": {"removal_steps": 20, "removal_stop": "flagged set unlearned",
                         "mean_abs_cosine_gu_n": 0.3, "seconds": {"removal": 4.0}}}

    arms = projection_arms(result_of, UPGPConfig(), clean_ra=75.0)
    assert [a["arm"] for a in arms] == ["projected", "no projection"]
    assert arms[0]["mean |cos|"] == 0.3 and arms[1]["mean |cos|"] is None
    rows = [{"arch": arch, "attack": "badnets", "seed": seed, **a}
            for arch in ("a", "b") for seed in (0, 1) for a in arms]
    paired, counts = paired_counts(with_bars(pd.DataFrame(rows)), "arch", "projected",
                                   "no projection")
    assert paired.loc[("a", "badnets", 0), "acc (projected - no projection)"] == 2.0
    assert list(counts.index) == ["a", "b", "all"]
    assert counts.loc["all"].to_dict() == {"higher ACC": 4, "lower ASR": 4, "higher RA": 0,
                                           "models": 4}
