"""Feature visualisation: objectives read the right module and unit, transforms, robustness of the
regularised result, first-layer filters, PNG metadata, the CLI, bad input."""
import json

import pytest
import torch

from _analysis_tasks import oriented_bars
from fastladder import cli
from fastladder.analysis._report import read_png_metadata, save_image_grid
from fastladder.analysis.feature_viz import (channel, class_logit, diversity, first_layer_filters, layer,
                                             objective_robustness, objective_values, random_transform,
                                             segmentation_class, unit, visualize)
from fastladder.models import create_model

TINY_LDN = dict(growth_rate=4, block_config=(1, 1, 1, 2), num_init_features=8, context_channels=16,
                upsample_channels=8)


def test_objectives_read_the_right_module_and_unit(classifier):
    model = classifier.model
    images, _ = oriented_bars(3, 16, classifier.generator)
    with torch.no_grad():
        after_second_relu = model.features[:5](images)          # features.4
        last = model.features(images)                           # features.7
        logits = model(images)
    torch.testing.assert_close(objective_values(model, channel("features.4", 5), images),
                               after_second_relu[:, 5].mean((1, 2)))
    torch.testing.assert_close(objective_values(model, unit("features.7", 3, 1, 2), images), last[:, 3, 1, 2])
    torch.testing.assert_close(objective_values(model, unit("features.7", 3), images), last[:, 3, 2, 2])
    torch.testing.assert_close(objective_values(model, layer("features.4"), images),
                               after_second_relu.pow(2).mean((1, 2, 3)))
    torch.testing.assert_close(objective_values(model, class_logit(2), images), logits[:, 2])
    combined = channel("features.4", 5) + 0.5 * class_logit(2) - class_logit(1)
    torch.testing.assert_close(objective_values(model, combined, images),
                               after_second_relu[:, 5].mean((1, 2)) + 0.5 * logits[:, 2] - logits[:, 1])


def test_segmentation_objective(segmenter):
    model = segmenter.model
    images = torch.rand(2, 3, 20, 24, generator=segmenter.generator)
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(objective_values(model, segmentation_class(2), images), logits[:, 2].mean((1,
                                                                                                          2)))
    torch.testing.assert_close(objective_values(model, segmentation_class(1, (3, 4, 10, 20)), images),
                               logits[:, 1, 3:10, 4:20].mean((1, 2)))
    region = torch.zeros(20, 24, dtype=torch.bool)
    region[5, 7] = region[11, 2] = True
    torch.testing.assert_close(objective_values(model, segmentation_class(3, region), images),
                               (logits[:, 3, 5, 7] + logits[:, 3, 11, 2]) / 2)


def test_random_transform_geometry(generator):
    images = torch.rand(3, 3, 12, 16, generator=generator)
    assert random_transform(images, (), generator=generator) is images
    # identity parameters: the affine resampling reproduces the image exactly (grid on pixel centres)
    identity = random_transform(images, ("jitter", "scale", "rotate"), generator=generator, jitter=(0, 0),
                                scales=(1.0,), angles=(0.0,))
    torch.testing.assert_close(identity, images, rtol=0, atol=1e-5)
    # a pure jitter is an integer shift, with the padding value where the image moved away
    shifted = random_transform(images, ("jitter",), generator=torch.Generator().manual_seed(5), jitter=(3, 0),
                               pad_value=0.5)
    shift = torch.randint(-3, 4, (3, 2), generator=torch.Generator().manual_seed(5))
    for k in range(3):
        dx, dy = shift[k].tolist()
        expected = torch.full_like(images[k], 0.5)
        h, w = images.shape[-2:]
        expected[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            images[k, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        torch.testing.assert_close(shifted[k], expected, rtol=0, atol=1e-5)
    # rotation by 90° of a square image is a transpose-and-flip
    square = images[:, :, :12, :12]
    rotated = random_transform(square, ("rotate",), generator=generator, angles=(90.0,))
    torch.testing.assert_close(rotated, torch.rot90(square, -1, (2, 3)), rtol=0, atol=1e-5)
    # blur keeps the mean of a constant image and smooths noise
    blurred = random_transform(images, ("blur",), generator=generator, blur_sigma=1.0)
    assert blurred.shape == images.shape
    assert (blurred[..., 1:] - blurred[..., :-1]).abs().mean() < (images[..., 1:] - images[...,
                                                                                           :-1]).abs().mean()
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(random_transform(flat, ("blur",), generator=generator), flat)


def test_visualize_raises_the_objective_and_is_reproducible(classifier):
    model = classifier.model
    objective = channel("features.7", 0) + class_logit(1)
    settings = dict(steps=16, num_images=3, size=16, progress=False)
    # (another library's gradient computation may have left .grad fields: they must stay as they are)
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    images = visualize(model, objective, generator=torch.Generator().manual_seed(7), **settings)
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    again = visualize(model, objective, generator=torch.Generator().manual_seed(7), **settings)
    torch.testing.assert_close(images, again)
    # Ascent is checked without the random transforms: with them, 16 steps raise the objective's mean
    # over transformed copies, and once in ten full test runs an image scored lower untransformed
    # than at the start (FASTLADDER_SEED=368008041: -4.10 against -3.50).
    plain_settings = dict(settings, transforms=())
    ascended = visualize(model, objective, generator=torch.Generator().manual_seed(7), **plain_settings)
    start = visualize(model, objective, generator=torch.Generator().manual_seed(7), **{**plain_settings,
                                                                                       "steps": 0})
    assert (objective_values(model, objective, ascended) > objective_values(model, objective, start)).all()
    for p, before in zip(model.parameters(), grads_before):
        assert (p.grad is None and before is None) or torch.equal(p.grad, before)
    assert not model.training
    # The diversity term, ascended on its own, makes the images of a batch less alike. (Comparing a
    # channel objective with and without diversity_weight=20 was too weak a test: on this model the
    # Gram matrices stay nearly parallel, the difference was 1e-4 either way and it had the wrong
    # sign for FASTLADDER_SEED=852864905.)
    div = diversity("features.4")
    spread = visualize(model, div, generator=torch.Generator().manual_seed(3), **plain_settings)
    alike = visualize(model, div, generator=torch.Generator().manual_seed(3),
                      **{**plain_settings, "steps": 0})
    assert objective_values(model, div, spread).mean() > objective_values(model, div, alike).mean()
    # diversity_weight adds that term to the objective: the same seed then gives other images
    plain = visualize(model, channel("features.4", 2), generator=torch.Generator().manual_seed(3), **settings)
    diverse = visualize(model, channel("features.4", 2), diversity_weight=20.0,
                        generator=torch.Generator().manual_seed(3), **settings)
    assert not torch.equal(diverse, plain)


def test_regularised_visualisation_is_robust(classifier):
    """The check of Olah et al.'s argument: an image optimised under random transforms keeps its
    objective under new random jitter / scale / rotation; an unregularised one does not.

    "Keeps": objective_robustness, the mean over 32 random transforms T of objective(T(x)) divided
    by objective(x), averaged over the K = 2 images; the objective is one unit (the centre of the
    most active channel of the last convolution, before its ReLU: after it, a unit that is dead on
    the grey starting image has a zero gradient and the image never changes, seen with
    FASTLADDER_SEED=251304720), positive for both images.

    The fractions depend on the trained model: over 16 seeds the regularised image kept 0.76–0.97
    and the unregularised one 0.55–0.78, the regularised one 0.14–0.27 more (at 16 transforms:
    one seed kept 0.784 against 0.609). So the test asserts the gap, and a floor well below it."""
    model = classifier.model
    images, _ = oriented_bars(64, 16, classifier.generator)
    with torch.no_grad():
        busiest = model.features(images).mean((0, 2, 3)).argmax().item()
    objective = unit("features.6", busiest)
    geometry = dict(jitter=(4, 4))
    # lr 0.1 (twice Lucid's) over 128 steps: with 0.05 the regularised result is still converging and
    # keeps 0.77–0.90 of its value depending on the seed; with 0.1, 0.82–0.92 over the seeds tried
    settings = dict(steps=128, lr=0.1, num_images=2, size=32, generator=classifier.generator, progress=False)
    regularised = visualize(model, objective, **settings, **geometry)
    unregularised = visualize(model, objective, transforms=(), fourier=False, decorrelate=False, **settings)
    assert (objective_values(model, objective, regularised) > 0).all()
    assert (objective_values(model, objective, unregularised) > 0).all()
    kept_regularised = objective_robustness(model, objective, regularised, num_transforms=32,
                                            generator=classifier.generator, **geometry).mean().item()
    kept_unregularised = objective_robustness(model, objective, unregularised, num_transforms=32,
                                              generator=classifier.generator, **geometry).mean().item()
    print(f"kept: regularised {kept_regularised:.3f}, unregularised {kept_unregularised:.3f}")
    assert kept_regularised >= kept_unregularised + 0.08, (kept_regularised, kept_unregularised)
    assert kept_regularised >= 0.7, (kept_regularised, kept_unregularised)


def test_first_layer_filters(classifier):
    grid = first_layer_filters(classifier.model, scale=3, padding=1)
    # 16 filters 3×3, enlarged 3×: a 4×4 grid of 9-pixel tiles with 1-pixel borders
    assert grid.dtype == torch.uint8 and grid.shape == (3, 4 * 10 + 1, 4 * 10 + 1)
    weight = classifier.model.features[0].weight.detach()
    for index in range(16):
        row, column = divmod(index, 4)
        tile = grid[:, 1 + row * 10:1 + row * 10 + 9, 1 + column * 10:1 + column * 10 + 9]
        assert tile.min() == 0 and tile.max() == 255  # normalised per filter
        expected = (weight[index] - weight[index].min()) / (weight[index].max() - weight[index].min()) * 255
        torch.testing.assert_close(tile[:, ::3, ::3].float(), expected.round(), rtol=0, atol=1)


def test_png_metadata(tmp_path, generator):
    images = torch.rand(5, 3, 8, 8, generator=generator)
    settings = {"objective": "channel:features.7:3", "steps": 12, "transforms": ["jitter", "blur"]}
    path = save_image_grid(tmp_path / "grid.png", images, {"settings": settings, "note": "plain text"},
                           nrow=3)
    metadata = read_png_metadata(path)
    assert json.loads(metadata["settings"]) == settings and metadata["note"] == "plain text"
    from PIL import Image
    with Image.open(path) as png:
        assert png.size == (3 * 10 + 2, 2 * 10 + 2)


def test_cli_visualize_and_attack(tmp_path, generator, capsys):
    model = create_model("ladder_densenet121", num_classes=4, **TINY_LDN)
    checkpoint = tmp_path / "ldn.pt"
    torch.save({"model": model.state_dict(), "model_name": "ladder_densenet121", "model_kwargs": TINY_LDN,
                "num_classes": 4}, checkpoint)
    out = tmp_path / "viz"
    assert cli.main(["visualize", "--weights", str(checkpoint), "--objective",
                     "channel:features.transition1:3",
                     "--objective", "segclass:1:0,0,32,32", "--filters", "--steps", "2", "--size", "64",
                     "--num-images", "2", "--out", str(out), "--device", "cpu"]) == 0
    metadata = read_png_metadata(out / "channel_features.transition1_3.png")
    settings = json.loads(metadata["settings"])
    assert settings["objective"] == "channel:features.transition1:3" and settings["steps"] == 2
    assert len(json.loads(metadata["objective_values"])) == 2
    assert (out / "segclass_1_0_0_32_32.png").exists() and (out / "first_layer_filters.png").exists()

    # the targets the README names run as modules of the eval-mode model too
    for target in ("features.conv0", "upsample.0", "classifier"):
        assert cli.main(["visualize", "--weights", str(checkpoint), "--objective", f"channel:{target}:0",
                         "--steps", "1", "--size", "64", "--num-images", "1", "--out", str(out),
                         "--device", "cpu"]) == 0, target
    # a name that is not a module: one line with the close names
    capsys.readouterr()
    assert cli.main(["visualize", "--weights", str(checkpoint), "--objective", "channel:features.conv9:0",
                     "--steps", "1", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "'features.conv9' is not a module of the model; close names: features.conv0" in err
    # a module the eval forward does not run (the auxiliary classifier serves the training loss only)
    assert cli.main(["visualize", "--weights", str(checkpoint), "--objective", "channel:aux_classifier:0",
                     "--steps", "1", "--size", "64", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fastladder visualize: error:")]
    assert len(errors) == 1 and "['aux_classifier'] did not run" in errors[0]
    assert "features.conv0, features.norm0" in errors[0] and "1.features" not in errors[0]  # the user's names
    assert "Traceback" not in err

    from PIL import Image
    image_path = tmp_path / "scene.png"
    Image.fromarray((torch.rand(64, 64, 3, generator=generator) * 255).byte().numpy()).save(image_path)
    adv = tmp_path / "adv"
    assert cli.main(["attack", "--weights", str(checkpoint), "--attack", "dag", "--max-iter", "3",
                     str(image_path), "--out", str(adv), "--device", "cpu"]) == 0
    summary = json.loads((adv / "summary.json").read_text())
    assert summary["attack"] == "dag" and summary["num_images"] == 1 and len(summary["changed_fraction"]) == 1
    assert read_png_metadata(adv / "scene_dag.png")["attack"] == "dag"
    capsys.readouterr()
    assert cli.main(["attack", "--weights", str(checkpoint), "--attack", "pgd", str(image_path), "--out",
                     str(adv), "--device", "cpu"]) == 2
    assert "is for classification models" in capsys.readouterr().err


def test_bad_input(classifier):
    model = classifier.model
    images, _ = oriented_bars(2, 16, classifier.generator)
    with pytest.raises(ValueError, match=r"layer 'features.99' is not a submodule of TinyCNN.*features.0"):
        objective_values(model, channel("features.99", 0), images)
    with pytest.raises(ValueError,
                       match=r"channel 40 is out of range for layer 'features.4' with 32 channels"):
        objective_values(model, channel("features.4", 40), images)
    with pytest.raises(ValueError, match=r"unit position \(y=9, x=0\) is outside"):
        objective_values(model, unit("features.7", 0, 9, 0), images)
    with pytest.raises(ValueError, match=r"class_logit\(4\) needs classification logits"):
        objective_values(model, class_logit(4), images)
    with pytest.raises(ValueError, match="segmentation_class.*needs dense logits"):
        objective_values(model, segmentation_class(0), images)
    with pytest.raises(ValueError, match=r"transforms must be a subset.*\['shear'\]"):
        visualize(model, class_logit(0), steps=1, transforms=("jitter", "shear"), progress=False)
    with pytest.raises(ValueError, match="objective must be an Objective"):
        visualize(model, "class:0", steps=1, progress=False)
    with pytest.raises(ValueError, match="--objective 'channel:features.0'"):
        from fastladder.analysis.commands import parse_objective
        parse_objective("channel:features.0")
    with pytest.raises(ValueError, match=r"x must be \[N, 3, H, W\].*\(2, 4, 16, 16\)"):
        from fastladder.nn import Normalize
        Normalize([0.5] * 3, [0.2] * 3)(torch.rand(2, 4, 16, 16))
