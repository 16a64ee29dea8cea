"""Adversarial attacks: DeepFool and PGD against foolbox, DDN, FGSM, DAG on a segmenter, the SSD
attack on a stand-in detector, Normalize, reports and bad input."""
import json

import pytest
import torch
from torch import nn

from _analysis_tasks import oriented_bars, rectangle_scenes, train_detector
from fastladder.analysis._report import (attack_summary, flipped_fraction, read_png_metadata,
                                         save_attack_figure)
from fastladder.analysis.adversarial import (AttackResult, dag, ddn, deepfool, fgsm, perturbation_norms, pgd,
                                             ssd_attack)
from fastladder.nn import Normalize


def correctly_classified(task, n):
    images, labels = oriented_bars(n, 16, task.generator)
    with torch.no_grad():
        keep = task.model(images).argmax(1) == labels
    assert keep.float().mean() > 0.9, "the test classifier did not learn its task"
    return images[keep], labels[keep]


def check_result(result, images):
    assert isinstance(result, AttackResult)
    assert result.adversarial.shape == images.shape and result.adversarial.dtype == images.dtype
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert result.success.dtype == torch.bool and result.success.shape == (images.shape[0],)
    l2, linf = perturbation_norms(result.adversarial, images)
    torch.testing.assert_close(result.l2, l2)
    torch.testing.assert_close(result.linf, linf)


def test_deepfool_matches_foolbox(classifier):
    fb = pytest.importorskip("foolbox")
    images, labels = correctly_classified(classifier, 32)
    # foolbox's meaning of candidates: classes considered, the true one included (here all 4)
    result = deepfool(classifier.model, images, labels, steps=50, overshoot=0.02, candidates=4)
    check_result(result, images)
    attack = fb.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02, candidates=4)
    _, reference, reference_success = attack(fb.PyTorchModel(classifier.model, bounds=(0, 1)), images, labels,
                                             epsilons=None)
    reference_l2 = (reference - images).flatten(1).norm(dim=1)
    assert result.success.float().mean() >= reference_success.float().mean()
    ours, theirs = result.l2[result.success].median(), reference_l2[reference_success].median()
    assert abs(ours / theirs - 1) < 0.1, (ours, theirs)
    with torch.no_grad():
        assert (classifier.model(result.adversarial).argmax(1) != labels).equal(result.success)


def test_deepfool_leaves_misclassified_images_alone(classifier):
    images, labels = correctly_classified(classifier, 8)
    wrong = (labels + 1) % 4
    result = deepfool(classifier.model, images, wrong, steps=5)
    assert result.success.all() and (result.l2 == 0).all()


@pytest.mark.parametrize("norm, eps", [("linf", 0.07), ("l2", 1.2)])
def test_pgd_matches_foolbox(classifier, norm, eps):
    fb = pytest.importorskip("foolbox")
    images, labels = correctly_classified(classifier, 64)
    result = pgd(classifier.model, images, labels, eps=eps, alpha=eps / 4, steps=10, norm=norm)
    check_result(result, images)
    bound = result.linf if norm == "linf" else result.l2
    assert (bound <= eps + 1e-5).all()
    attack = (fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD)(abs_stepsize=eps / 4, steps=10,
                                                                         random_start=False)
    _, reference, _ = attack(fb.PyTorchModel(classifier.model, bounds=(0, 1)), images, labels, epsilons=eps)
    with torch.no_grad():
        reference_accuracy = (classifier.model(reference).argmax(1) == labels).float().mean().item()
    accuracy = 1 - result.success.float().mean().item()
    assert abs(accuracy - reference_accuracy) <= 0.02, (accuracy, reference_accuracy)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_random_start_and_target(classifier, norm):
    images, labels = correctly_classified(classifier, 16)
    eps = 0.2 if norm == "linf" else 3.0
    target = (labels + 1) % 4
    result = pgd(classifier.model, images, labels, eps=eps, steps=20, norm=norm, random_start=True,
                 target_labels=target, generator=classifier.generator)
    check_result(result, images)
    assert ((result.linf if norm == "linf" else result.l2) <= eps + 1e-5).all()
    with torch.no_grad():
        prediction = classifier.model(result.adversarial).argmax(1)
    assert result.success.equal(prediction == target)
    assert result.success.float().mean() > 0.5


def _saturated_linear_classifier():
    """A linear 3-class model on 2×4×4 images whose logits at the returned image are
    [24, 6.2, -32]: the true class's softmax is 1 − 2e-8, which is 1.0 in float32. The other
    classes' weights are 0.1× the true one's, so raising their logits alone raises the true logit
    more: only the true class's term of the gradient lowers the margin."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 3)).eval()
    with torch.no_grad():
        true_weight = 4 * torch.randn(32, generator=generator)  # large enough to fool inside [0, 1]
        model[1].weight.copy_(torch.stack([true_weight, 0.1 * true_weight, 0.1 * true_weight]))
        model[1].bias.zero_()
        image = torch.rand(1, 2, 4, 4, generator=generator)
        logits = model(image)[0]
        model[1].bias.copy_(torch.tensor([24.0, 6.2, -32.0]) - logits)
    return model, image, torch.tensor([0])


def test_attacks_move_a_saturated_image_towards_the_boundary():
    """Autograd's CE gradient is softmax − onehot, whose true-class entry rounds to 0 here; the
    attacks' gradient keeps it (minus the sum of the other probabilities), so one step lowers the
    true logit's margin, and DDN, FGSM and PGD all fool the model."""
    model, image, label = _saturated_linear_classifier()
    with torch.no_grad():
        assert model(image).softmax(1)[0, 0] == 1.0  # the saturation the test is about
    from fastladder.analysis.adversarial import _cross_entropy_gradient
    gradient = _cross_entropy_gradient(model, image, label, 1.0)
    weight = model[1].weight.detach()
    # d(margin)/dx · gradient < 0, margin = z_0 − max_other z, here z_1
    assert ((weight[0] - weight[1]) @ gradient.flatten()) < 0
    assert ddn(model, image, label, steps=100).success.all()
    assert fgsm(model, image, label, eps=1.0).success.all()
    assert pgd(model, image, label, eps=1.0, steps=20).success.all()


def test_ddn_finds_smaller_perturbations_than_deepfool(classifier):
    images, labels = correctly_classified(classifier, 12)
    result = ddn(classifier.model, images, labels, steps=100)
    check_result(result, images)
    assert result.success.all()
    reference = deepfool(classifier.model, images, labels, candidates=4)
    assert result.l2.median() <= 1.05 * reference.l2.median(), (result.l2.median(), reference.l2.median())
    target = (labels + 2) % 4
    targeted = ddn(classifier.model, images, labels, steps=100, target_labels=target)
    with torch.no_grad():
        assert targeted.success.equal(classifier.model(targeted.adversarial).argmax(1) == target)
    assert targeted.success.float().mean() >= 0.9


def test_fgsm(classifier):
    images, labels = correctly_classified(classifier, 16)
    unchanged = fgsm(classifier.model, images, labels, eps=0.0)
    assert torch.equal(unchanged.adversarial, images) and not unchanged.success.any()
    result = fgsm(classifier.model, images, labels, eps=0.1)
    check_result(result, images)
    # every value moved by exactly eps unless the [0, 1] box cut it
    moved = (result.adversarial - images).abs()
    inside = (images > 0.1 + 1e-6) & (images < 0.9 - 1e-6)
    torch.testing.assert_close(moved[inside], torch.full_like(moved[inside], 0.1))


def test_attacks_through_normalize(classifier):
    """A model reading normalised input, wrapped with Normalize, attacked in [0, 1]."""
    mean, std = torch.tensor([0.3, 0.4, 0.5]), torch.tensor([0.2, 0.25, 0.3])
    inner = nn.Sequential(nn.Conv2d(3, 3, 1), classifier.model)
    with torch.no_grad():  # inner(normalize(x)) == classifier(x): undo the normalisation in a 1x1 conv
        inner[0].weight.copy_(torch.diag(std).view(3, 3, 1, 1))
        inner[0].bias.copy_(mean)
    wrapped = nn.Sequential(Normalize(mean, std), inner).eval()
    images, labels = correctly_classified(classifier, 8)
    torch.testing.assert_close(wrapped(images), classifier.model(images), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(Normalize(mean, std)(images), (images - mean.view(3, 1, 1)) / std.view(3, 1,
                                                                                                      1))
    ours = deepfool(wrapped, images, labels, candidates=4)
    plain = deepfool(classifier.model, images, labels, candidates=4)
    torch.testing.assert_close(ours.l2, plain.l2, rtol=1e-2, atol=1e-3)


def test_dag_flips_the_targeted_region(segmenter, tmp_path):
    images, labels = rectangle_scenes(4, 24, segmenter.generator)
    with torch.no_grad():
        clean = segmenter.model(images).argmax(1)
    assert (clean == labels).float().mean() > 0.9, "the test segmenter did not learn its task"
    # the region: every correctly segmented pixel of one object class; target: the next class
    region_class = labels[labels > 0].mode().values.item()
    mask = (labels == region_class) & (clean == labels)
    target = torch.full_like(labels, region_class % 3 + 1)
    # the tiny segmenter reads colour, and recolouring needs a larger change than the paper's
    # networks do: steps of 2/255 (gamma 2) instead of 0.5/255
    result = dag(segmenter.model, images, labels, target_labels=target, mask=mask, gamma=2.0)
    check_result(result, images)
    with torch.no_grad():
        prediction = segmenter.model(result.adversarial).argmax(1)
    flipped = ((prediction == target) & mask).sum() / mask.sum()
    assert flipped >= 0.9, f"flipped {flipped:.3f} of the region, L2 {result.l2.tolist()}"
    assert result.success.equal(~((prediction != target) & mask).flatten(1).any(1))
    # each step is gamma / 255 in L∞, at most max_iter of them
    assert (result.linf <= 200 * 2.0 / 255 + 1e-6).all()
    changed = flipped_fraction(prediction, clean, mask)
    summary = attack_summary(result, changed_fraction=changed)
    print(f"DAG: flipped {flipped:.3f} of the region; L2 per image {result.l2.tolist()}, "
          f"median {summary['median_l2_all']:.3f}")
    assert summary["num_images"] == 4 and 0 <= summary["success_rate"] <= 1
    assert summary["median_l2_all"] == pytest.approx(result.l2.double().median().item())
    json.dumps(summary)
    palette = torch.tensor([[40, 40, 40], [220, 60, 50], [50, 200, 80], [60, 80, 230]], dtype=torch.uint8)
    path = save_attack_figure(tmp_path / "dag.png", images, result.adversarial, clean, prediction,
                              palette=palette,
                              metadata={"attack": "dag"})
    assert read_png_metadata(path)["attack"] == "dag"


def test_dag_untargeted(segmenter):
    images, labels = rectangle_scenes(2, 24, segmenter.generator)
    with torch.no_grad():
        clean = segmenter.model(images).argmax(1)
    mask = (labels > 0) & (clean == labels)
    result = dag(segmenter.model, images, labels, mask=mask, gamma=2.0)
    with torch.no_grad():
        prediction = segmenter.model(result.adversarial).argmax(1)
    assert (((prediction != labels) & mask).sum() / mask.sum()) >= 0.9
    assert result.success.equal(~((prediction == labels) & mask).flatten(1).any(1))


def raw_conf(model, images):
    """conf_logits [B, P, C] of the stand-in, computed independently of the attack's mode handling."""
    model.train()
    model.body[1].eval()
    with torch.no_grad():
        _, conf = model(images)
    model.eval()
    return conf


def test_ssd_attack_on_stand_in(generator):
    model = train_detector(generator)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    images, _ = rectangle_scenes(4, 16, generator, num_classes=3)
    clean = raw_conf(model, images)
    scores, classes = clean.softmax(2)[..., 1:].max(2)
    detecting = scores >= 0.5
    assert detecting.any(1).all(), "the stand-in detector did not learn to detect the rectangles"

    result = ssd_attack(model, images, mode="suppress", gamma=2.0)
    # modes restored, batch-norm statistics untouched
    assert not model.training and not model.body[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    remaining = raw_conf(model, result.adversarial).softmax(2)[..., 1:].amax(2) >= 0.5
    assert result.success.equal(~remaining.any(1))
    assert remaining.sum() <= 0.1 * detecting.sum(), (remaining.sum(), detecting.sum())

    # mislabel: every detection of class 1 or 2 becomes the other class
    target = 3 - (classes + 1)
    mislabel = ssd_attack(model, images, mode="mislabel", gamma=2.0)
    relabelled = raw_conf(model, mislabel.adversarial).argmax(2) == target
    assert mislabel.success.equal((relabelled | ~detecting).all(1))
    # Swapping the two classes asks neighbouring priors for opposite colour changes, and the
    # stand-in cannot always be driven there: over 16 seeds 0.67–1.0 of the detections were
    # relabelled (0.8 failed 1 run in about 10: FASTLADDER_SEED=104742641 gives 24 of 36).
    assert (relabelled & detecting).sum() >= 0.5 * detecting.sum(), ((relabelled & detecting).sum(),
                                                                     detecting.sum())
    with pytest.raises(ValueError, match="target_label must be a non-background class"):
        ssd_attack(model, images, mode="mislabel", target_label=0)


def test_bad_input(classifier, segmenter, generator):
    images, labels = correctly_classified(classifier, 4)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        deepfool(classifier.model, images * 2 + 0.5, labels)
    with pytest.raises(ValueError, match=r"images must be a floating \[N, C, H, W\]"):
        pgd(classifier.model, images[0], labels, eps=0.1)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \[4\].*\(3,\)"):
        fgsm(classifier.model, images, labels[:3], eps=0.1)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\), got values in \[.*7\]"):
        ddn(classifier.model, images, torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"target_labels must be class indices"):
        pgd(classifier.model, images, labels, eps=0.1, target_labels=torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="norm must be"):
        pgd(classifier.model, images, labels, eps=0.1, norm="l1")
    scenes, maps = rectangle_scenes(2, 24, generator)
    with pytest.raises(ValueError,
                       match=r"labels must be of shape \[N, H, W\] = \[2, 24, 24\].*\(2, 24, 23\)"):
        dag(segmenter.model, scenes, maps[..., :-1])
    with pytest.raises(ValueError, match=r"mask must be of shape \[N, H, W\].*\(1, 24, 24\)"):
        dag(segmenter.model, scenes, maps, mask=maps[:1] > 0)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\) or 255.*\[9\]"):
        bad = maps.clone()
        bad[1, 3, 4] = 9
        dag(segmenter.model, scenes, bad)
    with pytest.raises(ValueError, match=r"target_labels must be class indices in \[0, 4\)"):
        dag(segmenter.model, scenes, maps, target_labels=torch.full_like(maps, 4))
    with pytest.raises(ValueError, match="target_labels equal labels"):
        dag(segmenter.model, scenes, maps, target_labels=maps)
    with pytest.raises(ValueError, match="dense logits"):
        dag(classifier.model, scenes, maps)
