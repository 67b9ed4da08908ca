"""Losses against values worked out by hand / in plain Python (not via the code under test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from poc59.model.losses import CrossEntropyLoss, DiceFocalLoss, DiceLoss, FocalLoss

IGN = 255
REPO = Path(__file__).resolve().parents[2]

# 1 x 3 x 2 x 2 logits; pixels in row-major order p0..p3, class vector per pixel.
PIXEL_LOGITS = [
    [2.0, 0.5, -1.0],  # p0, target 0
    [0.0, 1.0, 0.0],  # p1, target 1
    [5.0, -3.0, 1.0],  # p2, target 255 (ignored)
    [0.3, 0.3, 1.5],  # p3, target 0
]
PIXEL_TARGETS = [0, 1, IGN, 0]  # class 2 is absent from the batch


def make_logits(pixels=PIXEL_LOGITS) -> torch.Tensor:
    # [4 pixels, 3 classes] -> [1, 3, 2, 2]
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, 3, 2, 2).clone().requires_grad_(True)


def make_target(labels=PIXEL_TARGETS) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.long).reshape(1, 2, 2)


# ---- independent plain-Python references -------------------------------------


def softmax(v):
    m = max(v)
    e = [math.exp(x - m) for x in v]
    s = sum(e)
    return [x / s for x in e]


def ref_focal(pixels, labels, w=None, alpha=0.25, gamma=2.0):
    terms = []
    for logit, y in zip(pixels, labels):
        if y == IGN:
            continue
        py = softmax(logit)[y]
        wy = 1.0 if w is None else w[y]
        terms.append(alpha * wy * (1 - py) ** gamma * (-math.log(py)))
    return sum(terms) / len(terms)


def ref_dice(pixels, labels, w=None, smooth=1.0):
    n_cls = len(pixels[0])
    inter = [0.0] * n_cls
    psum = [0.0] * n_cls
    tsum = [0.0] * n_cls
    for logit, y in zip(pixels, labels):
        if y == IGN:
            continue
        p = softmax(logit)
        for c in range(n_cls):
            t = 1.0 if y == c else 0.0
            inter[c] += p[c] * t
            psum[c] += p[c]
            tsum[c] += t
    present = [c for c in range(n_cls) if tsum[c] > 0]
    dice = {c: 1 - (2 * inter[c] + smooth) / (psum[c] + tsum[c] + smooth) for c in present}
    ws = {c: (1.0 if w is None else w[c]) for c in present}
    if sum(ws.values()) == 0:
        return sum(dice.values()) / len(dice)
    return sum(ws[c] * dice[c] for c in present) / sum(ws.values())


def ref_ce(pixels, labels, w=None):
    num = den = 0.0
    for logit, y in zip(pixels, labels):
        if y == IGN:
            continue
        wy = 1.0 if w is None else w[y]
        num += wy * -math.log(softmax(logit)[y])
        den += wy
    return num / den


W = [1.0, 2.0, 3.0]


# ---- exact fractions on uniform logits (p = 1/3 everywhere) -------------------


def test_uniform_logits_exact_values():
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    target = make_target()
    # Focal: each valid pixel 0.25 * (2/3)^2 * ln 3; weights [1,2,1] on labels 0,1,0.
    per = 0.25 * (2 / 3) ** 2 * math.log(3)
    assert FocalLoss()(logits, target).item() == pytest.approx(per, rel=1e-6)
    assert FocalLoss(W)(logits, target).item() == pytest.approx(per * (1 + 2 + 1) / 3, rel=1e-6)
    # Dice: class 0: inter 2/3, sum p 1, sum t 2 -> 1 - (4/3 + 1) / 4 = 5/12
    #       class 1: inter 1/3, sum p 1, sum t 1 -> 1 - (2/3 + 1) / 3 = 4/9
    #       class 2 absent (would be 1 - 1/2 = 1/2 if wrongly included)
    assert DiceLoss()(logits, target).item() == pytest.approx((5 / 12 + 4 / 9) / 2, rel=1e-6)
    assert DiceLoss(W)(logits, target).item() == pytest.approx((1 * 5 / 12 + 2 * 4 / 9) / 3, rel=1e-6)
    # CE: every nll is ln 3, so any weighted mean is ln 3.
    assert CrossEntropyLoss(W)(logits, target).item() == pytest.approx(math.log(3), rel=1e-6)


# ---- non-uniform logits against the Python references --------------------------


@pytest.mark.parametrize("w", [None, W])
def test_focal_matches_reference(w):
    got = FocalLoss(w)(make_logits(), make_target()).item()
    assert got == pytest.approx(ref_focal(PIXEL_LOGITS, PIXEL_TARGETS, w), rel=1e-5)


def test_focal_alpha_gamma_are_used():
    got = FocalLoss(W, alpha=0.5, gamma=0.0)(make_logits(), make_target()).item()
    assert got == pytest.approx(ref_focal(PIXEL_LOGITS, PIXEL_TARGETS, W, alpha=0.5, gamma=0.0), rel=1e-5)
    # gamma 0, alpha 1, no weights: plain mean NLL over valid pixels
    plain = FocalLoss(alpha=1.0, gamma=0.0)(make_logits(), make_target()).item()
    assert plain == pytest.approx(ref_ce(PIXEL_LOGITS, PIXEL_TARGETS), rel=1e-5)


@pytest.mark.parametrize("w", [None, W])
def test_dice_matches_reference(w):
    got = DiceLoss(w)(make_logits(), make_target()).item()
    assert got == pytest.approx(ref_dice(PIXEL_LOGITS, PIXEL_TARGETS, w), rel=1e-5)


def test_dice_smooth_is_used():
    got = DiceLoss(smooth=0.1)(make_logits(), make_target()).item()
    assert got == pytest.approx(ref_dice(PIXEL_LOGITS, PIXEL_TARGETS, smooth=0.1), rel=1e-5)


def test_dice_absent_class_excluded():
    # Weight of the absent class 2 must not matter at all.
    a = DiceLoss([1.0, 2.0, 0.0])(make_logits(), make_target()).item()
    b = DiceLoss([1.0, 2.0, 1000.0])(make_logits(), make_target()).item()
    assert a == pytest.approx(b, rel=1e-7)
    # Including the absent class (unweighted mean over all 3) gives a different number.
    p = [softmax(v) for v, y in zip(PIXEL_LOGITS, PIXEL_TARGETS) if y != IGN]
    dice2 = 1 - 1 / (sum(q[2] for q in p) + 1)
    wrong = (2 * ref_dice(PIXEL_LOGITS, PIXEL_TARGETS) + dice2) / 3
    assert DiceLoss()(make_logits(), make_target()).item() != pytest.approx(wrong, rel=1e-3)


def test_dice_zero_weight_fallback_to_unweighted():
    # Present classes 0 and 1 both weight 0 -> unweighted mean over present classes.
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    got = DiceLoss([0.0, 0.0, 5.0])(logits, make_target())
    assert got.item() == pytest.approx((5 / 12 + 4 / 9) / 2, rel=1e-6)
    assert torch.isfinite(got)


def test_dice_focal_combination():
    lg, tg = make_logits(), make_target()
    d = ref_dice(PIXEL_LOGITS, PIXEL_TARGETS, W)
    f = ref_focal(PIXEL_LOGITS, PIXEL_TARGETS, W)
    assert DiceFocalLoss(W)(lg, tg).item() == pytest.approx(0.5 * d + 0.5 * f, rel=1e-5)
    got = DiceFocalLoss(W, dice_weight=0.3, focal_weight=0.7, alpha=0.5, gamma=1.0)(lg, tg).item()
    f2 = ref_focal(PIXEL_LOGITS, PIXEL_TARGETS, W, alpha=0.5, gamma=1.0)
    assert got == pytest.approx(0.3 * d + 0.7 * f2, rel=1e-5)


@pytest.mark.parametrize("w", [None, W])
def test_ce_matches_reference_and_torch(w):
    got = CrossEntropyLoss(w)(make_logits(), make_target()).item()
    assert got == pytest.approx(ref_ce(PIXEL_LOGITS, PIXEL_TARGETS, w), rel=1e-5)
    wt = None if w is None else torch.tensor(w)
    torch_ce = F.cross_entropy(make_logits(), make_target(), weight=wt, ignore_index=IGN).item()
    assert got == pytest.approx(torch_ce, rel=1e-5)


def test_ce_weighted_mean_not_pixel_mean():
    # With weights, CE is sum w*nll / sum w (not / number of pixels).
    got = CrossEntropyLoss(W)(make_logits(), make_target()).item()
    nll = [-math.log(softmax(v)[y]) for v, y in zip(PIXEL_LOGITS, PIXEL_TARGETS) if y != IGN]
    per_pixel_mean = (1 * nll[0] + 2 * nll[1] + 1 * nll[2]) / 3
    assert got == pytest.approx((1 * nll[0] + 2 * nll[1] + 1 * nll[2]) / 4, rel=1e-5)
    assert got != pytest.approx(per_pixel_mean, rel=1e-3)


# ---- ignored pixels, empty batches, gradients ----------------------------------

ALL_LOSSES = [
    lambda: FocalLoss(W),
    lambda: DiceLoss(W),
    lambda: DiceFocalLoss(W),
    lambda: CrossEntropyLoss(W),
]


@pytest.mark.parametrize("make_loss", ALL_LOSSES)
def test_ignored_pixel_contributes_nothing(make_loss):
    loss = make_loss()
    lg = make_logits()
    base = loss(lg, make_target())
    base.backward()
    assert torch.all(lg.grad[0, :, 1, 0] == 0), "gradient at the ignored pixel must be zero"
    changed = [list(v) for v in PIXEL_LOGITS]
    changed[2] = [-7.0, 9.0, 3.0]  # the ignored pixel
    again = loss(make_logits(changed), make_target())
    assert again.item() == pytest.approx(base.item(), rel=1e-7, abs=1e-9)
    # ...while changing a valid pixel does change the loss
    changed[3] = [-7.0, 9.0, 3.0]
    assert loss(make_logits(changed), make_target()).item() != pytest.approx(base.item(), rel=1e-4)


@pytest.mark.parametrize("make_loss", ALL_LOSSES)
def test_all_ignored_gives_zero_with_grad(make_loss):
    lg = torch.randn(2, 3, 4, 4, requires_grad=True)
    tg = torch.full((2, 4, 4), IGN, dtype=torch.long)
    out = make_loss()(lg, tg)
    assert out.item() == 0.0
    assert out.grad_fn is not None
    out.backward()
    assert lg.grad is not None and torch.all(lg.grad == 0)


@pytest.mark.parametrize("make_loss", ALL_LOSSES)
def test_gradient_finite_even_for_extreme_logits(make_loss):
    g = torch.Generator().manual_seed(0)
    lg = (torch.randn(2, 3, 8, 8, generator=g) * 50).requires_grad_(True)  # saturated softmax
    tg = torch.randint(0, 3, (2, 8, 8), generator=g)
    tg[0, :2] = IGN
    out = make_loss()(lg, tg)
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(lg.grad).all()
    assert lg.grad.abs().sum() > 0


@pytest.mark.parametrize("make_loss", ALL_LOSSES)
def test_low_precision_logits_computed_in_float32(make_loss):
    lg = make_logits().detach().to(torch.bfloat16)
    out = make_loss()(lg, make_target())
    assert out.dtype == torch.float32
    ref = make_loss()(lg.float(), make_target())
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


def test_uint8_target_accepted():
    tg = make_target().to(torch.uint8)
    assert DiceFocalLoss(W)(make_logits(), tg).item() == pytest.approx(
        DiceFocalLoss(W)(make_logits(), make_target()).item()
    )


# ---- validation ---------------------------------------------------------------


@pytest.mark.parametrize("cls", [FocalLoss, DiceLoss, DiceFocalLoss, CrossEntropyLoss])
def test_wrong_class_weight_length_raises(cls):
    with pytest.raises(ValueError, match="2 class weights but the logits have 3 classes"):
        cls([1.0, 2.0])(make_logits(), make_target())


@pytest.mark.parametrize("cls", [FocalLoss, DiceLoss, DiceFocalLoss, CrossEntropyLoss])
def test_target_shape_mismatch_raises(cls):
    with pytest.raises(ValueError, match="target must be"):
        cls()(make_logits(), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must be"):
        cls()(torch.zeros(3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_label_out_of_range_is_never_silently_used():
    # The data layer refuses such labels with the file's name (tests/data); the loss, which
    # must not sync with the host every step, still fails loudly rather than clamp.
    tg = make_target()
    tg[0, 0, 0] = 7
    with pytest.raises(RuntimeError, match="out of bounds"):
        DiceFocalLoss()(make_logits(), tg)


def test_bad_class_weights_raise():
    with pytest.raises(ValueError):
        FocalLoss([1.0, -1.0, 1.0])
    with pytest.raises(ValueError):
        FocalLoss([[1.0, 1.0]])


# ---- buffers, describe, config -------------------------------------------------


def test_class_weights_buffer_moves_but_not_persisted():
    loss = DiceFocalLoss(torch.tensor(W, dtype=torch.float64))
    assert loss.class_weights.dtype == torch.float32
    assert "class_weights" in dict(loss.named_buffers())
    assert "class_weights" not in loss.state_dict()
    assert loss.to("meta").class_weights.device.type == "meta"


def test_describe_records_what_ran():
    d = DiceFocalLoss(W, dice_weight=0.3, focal_weight=0.7, alpha=0.5, gamma=1.5).describe()
    assert d["name"] == "dice_focal"
    assert d["components"] == {"dice": 0.3, "focal": 0.7}
    assert d["alpha"] == 0.5 and d["gamma"] == 1.5
    assert d["class_weights"] == W
    assert d["ignore_index"] == IGN
    json.dumps(d)  # plain, serialisable
    assert FocalLoss().describe()["class_weights"] is None
    assert CrossEntropyLoss(W).describe()["components"] == {"ce": 1.0}
    assert DiceLoss().describe()["smooth"] == 1.0


@pytest.mark.parametrize(
    "name,cls",
    [("dice_focal", DiceFocalLoss), ("dice", DiceLoss), ("focal", FocalLoss), ("ce", CrossEntropyLoss)],
)
def test_hydra_config_instantiates(name, cls):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "loss" / f"{name}.yaml")
    assert "class_weights" not in cfg
    loss = instantiate(cfg, class_weights=W)
    assert type(loss) is cls
    assert loss.describe()["class_weights"] == W
    assert torch.isfinite(loss(make_logits(), make_target()))


def test_dice_focal_config_values():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    loss = instantiate(OmegaConf.load(REPO / "conf" / "loss" / "dice_focal.yaml"), class_weights=None)
    d = loss.describe()
    assert d["components"] == {"dice": 0.5, "focal": 0.5}
    assert (d["alpha"], d["gamma"]) == (0.25, 2.0)


# ---- the contract every loss meets: poc59.model.losses.probe ------------------


@pytest.mark.parametrize("make_loss", ALL_LOSSES)
def test_poc59s_losses_pass_the_probe(make_loss):
    from poc59.model.losses import probe

    probe(make_loss(), num_classes=3)


def test_third_party_losses_pass_the_probe_with_ignore_index_255():
    import segmentation_models_pytorch.losses as smp_losses

    from poc59.model.losses import probe

    probe(smp_losses.LovaszLoss(mode="multiclass", ignore_index=IGN), num_classes=16)
    probe(smp_losses.DiceLoss(mode="multiclass", ignore_index=IGN, class_weights=torch.ones(16)), num_classes=16)
    probe(torch.nn.CrossEntropyLoss(ignore_index=IGN), num_classes=16)


@pytest.mark.parametrize(
    "make_loss, says",
    [
        (lambda: torch.nn.CrossEntropyLoss(), "fails: IndexError"),  # 255 is no class
        (lambda: __import__("segmentation_models_pytorch").losses.LovaszLoss(mode="multiclass"), "counts pixels"),
        (lambda: torch.nn.CrossEntropyLoss(ignore_index=IGN, reduction="none"), "not one number"),
        (lambda: torch.nn.L1Loss(), "fails"),  # logits and labels of other shapes
    ],
    ids=["ce-without-ignore", "lovasz-without-ignore", "per-pixel", "not-a-segmentation-loss"],
)
def test_a_loss_that_cannot_be_called_as_the_module_does_is_named(make_loss, says):
    from poc59.model.losses import LossContractError, probe

    with pytest.raises(LossContractError, match=says):
        probe(make_loss(), num_classes=16)


def test_a_loss_without_gradient_is_refused():
    from poc59.model.losses import LossContractError, probe

    class Constant(torch.nn.Module):
        def forward(self, logits, target):
            return torch.tensor(1.0)

    with pytest.raises(LossContractError, match="no gradient"):
        probe(Constant(), num_classes=4)
