"""A tiny learnable segmentation dataset and a tiny ladder DenseNet configuration for the training tests."""
import torch
from torch.utils.data import Dataset

# A ladder DenseNet small enough for a CPU test step (a few hundred thousand multiply-adds per pixel).
TINY_LADDER_KWARGS = {"growth_rate": 4, "block_config": [1, 1, 1, 2], "num_init_features": 8,
                      "context_channels": 16, "upsample_channels": 8}


class ThresholdScenes(Dataset):
    """Random smooth images whose label is a function of the pixel colour: class 0 where red
    dominates, 1 where green does, 2 where blue does; ``ignore_border`` pixels on each side are 255.

    Training samples get a random horizontal flip and a random brightness shift drawn from torch's
    global generator, as real dataset transforms do (so the per-sample seeding matters).
    """

    num_classes = 3
    class_names = ["red", "green", "blue"]
    ignore_index = 255

    def __init__(self, num_images: int, size=(64, 64), seed: int = 0, train: bool = True,
                 ignore_border: int = 2):
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.rand(num_images, 3, size[0] // 8, size[1] // 8, generator=generator)
        self.images = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        self.labels = self.images.argmax(1)
        if ignore_border:
            self.labels[:, :ignore_border] = 255
            self.labels[:, -ignore_border:] = 255
        self.train = train

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image, label = self.images[index].clone(), self.labels[index].clone()
        if self.train:
            if torch.rand(()) < 0.5:
                image, label = image.flip(-1), label.flip(-1)
            image = image + 0.05 * torch.randn(())
        return (image - 0.5) / 0.25, label


def tiny_factory(num_train=8, num_val=4, size=(64, 64), ignore_border=2):
    """A dataset factory for ``train(config, dataset_factory=...)``: picklable (a module-level class)."""
    return TinyFactory(num_train, num_val, tuple(size), ignore_border)


class TinyFactory:
    def __init__(self, num_train, num_val, size, ignore_border):
        self.num_train, self.num_val, self.size, self.ignore_border = num_train, num_val, size, ignore_border

    def __call__(self, config, split):
        if split == "train":
            return ThresholdScenes(self.num_train, self.size, seed=1, train=True,
                                   ignore_border=self.ignore_border)
        return ThresholdScenes(self.num_val, self.size, seed=2, train=False, ignore_border=self.ignore_border)
