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
    model = TinyCNN(num_classes)
    for p in model.parameters():  # initialise from the generator so that one seed reproduces the test
        with torch.no_grad():
            if p.dim() > 1:
                bound = 1 / math.sqrt(p[0].numel())
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            else:
                p.zero_()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        images, labels = oriented_bars(64, size, generator, num_classes=num_classes)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
