"""Synthetic tasks and tiny models trained in seconds for the analysis tests."""
import math

import torch
import torch.nn.functional as F
from torch import nn


def oriented_bars(n, size, generator, *, num_classes=4):
    """Images [n, 3, size, size] in [0, 1]: a bar of random colour on a dark noisy background;
    the class is its orientation (0°, 45°, 90°, 135°, ... num_classes of them)."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    angle = labels.float() * math.pi / num_classes
    centre = (size - 1) / 2 + (torch.rand(n, 2, generator=generator) - 0.5) * size * 0.3
    dy, dx = y[None] - centre[:, 0, None, None], x[None] - centre[:, 1, None, None]
    distance = (-dx * torch.sin(angle)[:, None, None] + dy * torch.cos(angle)[:, None, None]).abs()
    along = (dx * torch.cos(angle)[:, None, None] + dy * torch.sin(angle)[:, None, None]).abs()
    bar = ((distance < 1.2) & (along < size * 0.35)).float()
    colour = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=generator)
    background = 0.25 * torch.rand(n, 3, size, size, generator=generator)
    images = (background * (1 - bar[:, None]) + colour * bar[:, None]).clamp(0, 1)
    return images, labels


class TinyCNN(nn.Module):
    def __init__(self, num_classes=4, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def train_classifier(generator, *, size=16, steps=150, num_classes=4):
    # initialised from the generator so that one seed reproduces the test
    model = _init_from(TinyCNN(num_classes), generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        images, labels = oriented_bars(64, size, generator, num_classes=num_classes)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def rectangle_scenes(n, size, generator, *, num_classes=4):
    """Scenes [n, 3, size, size] in [0, 1] with label maps [n, size, size]: a dark textured
    background (class 0) and rectangles of classes 1…num_classes-1, each class with its own colour."""
    palette = torch.tensor([[0.15, 0.15, 0.15], [0.85, 0.25, 0.2], [0.2, 0.8, 0.3], [0.25, 0.3, 0.9]])
    labels = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        for cls in torch.randperm(num_classes - 1, generator=generator)[:2].tolist():
            h, w = torch.randint(size // 4, size // 2, (2,), generator=generator).tolist()
            top = torch.randint(0, size - h, (1,), generator=generator).item()
            left = torch.randint(0, size - w, (1,), generator=generator).item()
            labels[i, top:top + h, left:left + w] = cls + 1
    images = palette[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, size, size, generator=generator)
    return images.clamp(0, 1), labels


class TinySegmenter(nn.Module):
    """Three convolutions (receptive field 9×9), logits at the input's size.

    Leaky ReLUs: with plain ReLUs a pixel whose 16 hidden units all go dead has a zero gradient
    and a constant (bias) prediction, and a gradient attack that walks a region into that dead
    zone stops there (seen: DAG flipping 1% of a region, FASTLADDER_SEED=24)."""

    def __init__(self, num_classes=4, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.1),
                                  nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.LeakyReLU(0.1))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.body(x))


def _init_from(model, generator):
    for p in model.parameters():
        with torch.no_grad():
            if p.dim() > 1:
                bound = 1 / math.sqrt(p[0].numel())
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            else:
                p.zero_()
    return model


def train_segmenter(generator, *, size=24, steps=120, num_classes=4):
    model = _init_from(TinySegmenter(num_classes), generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        images, labels = rectangle_scenes(16, size, generator, num_classes=num_classes)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


class TinySSD(nn.Module):
    """Stand-in with the SSD interface: train mode → (loc [B, P, 4], conf_logits [B, P, C]) per
    prior (``anchors`` priors per cell of a 1/4-resolution map); eval mode → class scores only, as a
    post-processing head would give. Has a BatchNorm so that the attack's mode handling shows."""

    def __init__(self, num_classes=3, anchors=2, width=8):
        super().__init__()
        self.num_classes, self.anchors = num_classes, anchors
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width),
                                  nn.LeakyReLU(0.1),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.1))
        self.loc = nn.Conv2d(width, anchors * 4, 3, padding=1)
        self.conf = nn.Conv2d(width, anchors * num_classes, 3, padding=1)

    def forward(self, x):
        features = self.body(x)
        b = x.shape[0]
        loc = self.loc(features).permute(0, 2, 3, 1).reshape(b, -1, 4)
        conf = self.conf(features).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
        if self.training:
            return loc, conf
        return conf.softmax(2)


def train_detector(generator, *, size=16, steps=100, num_classes=3):
    """TinySSD trained to label each prior with the class of the rectangle under its cell's centre
    (0: background) on rectangle scenes: it "detects" the coloured rectangles."""
    model = _init_from(TinySSD(num_classes), generator)
    with torch.no_grad():
        model.body[1].weight.fill_(1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        images, labels = rectangle_scenes(32, size, generator, num_classes=num_classes)
        targets = labels[:, 2::4, 2::4].reshape(labels.shape[0], -1).repeat_interleave(model.anchors, 1)
        _, conf = model(images)
        loss = F.cross_entropy(conf.reshape(-1, num_classes), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()
