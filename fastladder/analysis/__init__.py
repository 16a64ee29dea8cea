"""Model analysis (section 4 of the paper): feature visualisation and adversarial examples.

``fastladder.analysis.feature_viz``: first-layer filters, activation maximisation with Lucid's
regularisers. ``fastladder.analysis.adversarial``: DeepFool, DDN, FGSM, PGD for classifiers; DAG for
segmentation; a DAG-style attack on SSD detections.
"""
from fastladder.analysis import adversarial, feature_viz
from fastladder.analysis.adversarial import AttackResult, dag, ddn, deepfool, fgsm, pgd, ssd_attack
from fastladder.analysis.feature_viz import (class_logit, channel, first_layer_filters, layer,
                                             segmentation_class,
                                             unit, visualize)

__all__ = ["adversarial", "feature_viz", "AttackResult", "deepfool", "ddn", "fgsm", "pgd", "dag",
           "ssd_attack",
           "visualize", "channel", "unit", "layer", "class_logit", "segmentation_class",
           "first_layer_filters"]
