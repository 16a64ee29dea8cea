"""Datasets in their official layouts, the built-in synthetic sets, and transforms."""
from fastladder.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE, CamVid
from fastladder.data.cityscapes import Cityscapes
from fastladder.data.labels import (CITYSCAPES_CLASSES, CITYSCAPES_LABELS, CITYSCAPES_PALETTE, IGNORE_INDEX,
                                    cityscapes_label_to_train_id, cityscapes_train_to_label_id, colorize)
from fastladder.data.synthetic import SyntheticScenes, render_street_scene
from fastladder.data.transforms import (CITYSCAPES_MEAN, CITYSCAPES_STD, IMAGENET_MEAN, IMAGENET_STD,
                                        ColorJitter, Compose, Normalize, RandomCrop, RandomHorizontalFlip,
                                        RandomScale, Resize, ToFloat, segmentation_eval_transforms,
                                        segmentation_train_transforms)
from fastladder.data.voc import VOC_CLASSES, VOC_PALETTE, VOCDetection, VOCSegmentation, voc_colormap
from fastladder.data.registry import (DatasetInfo, build_dataset, dataset_info, dataset_root,
                                      list_datasets)

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_LABELS", "CITYSCAPES_PALETTE", "IGNORE_INDEX",
           "cityscapes_label_to_train_id", "cityscapes_train_to_label_id", "colorize",
           "Cityscapes", "VOCSegmentation", "VOCDetection", "VOC_CLASSES", "VOC_PALETTE", "voc_colormap",
           "CamVid", "CAMVID_CLASSES", "CAMVID_PALETTE", "SyntheticScenes", "render_street_scene",
           "CITYSCAPES_MEAN", "CITYSCAPES_STD", "IMAGENET_MEAN", "IMAGENET_STD", "Compose", "RandomScale",
           "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "Resize", "ToFloat", "Normalize",
           "segmentation_train_transforms", "segmentation_eval_transforms",
           "DatasetInfo", "dataset_info", "list_datasets", "build_dataset", "dataset_root"]
