"""Backbone weights by name: torchvision's ImageNet DenseNet and VGG16 checkpoints, fetched once into
the torch hub cache (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``) and
checked against the SHA-256 prefix in their file name, as torchvision does.

    create_model("ladder_densenet121", backbone_weights=resolve_backbone_weights("imagenet",
                                                                                 "ladder_densenet121"))

Without network access, put the file named in the error message into the cache folder it names.
"""
import hashlib
import os
import re
import urllib.error
from typing import Optional
from urllib.parse import urlparse

import torch

from fastladder.errors import ArgumentError, CheckpointError

__all__ = ["IMAGENET_URLS", "backbone_of", "imagenet_weights", "resolve_backbone_weights"]

# torchvision's ImageNet classification weights; the 8 hex digits in each file name are the first
# digits of the file's SHA-256. The DenseNet files use the old "norm.1" key style (remapped on load).
IMAGENET_URLS = {
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "densenet161": "https://download.pytorch.org/models/densenet161-8d451a50.pth",
    "densenet169": "https://download.pytorch.org/models/densenet169-b2777c0a.pth",
    "densenet201": "https://download.pytorch.org/models/densenet201-c1103571.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
_BACKBONE_IN_NAME = re.compile(r"(densenet\d+|vgg16)")


def backbone_of(model_name: str) -> str:
    """The torchvision network whose ImageNet weights fit ``model_name``'s backbone (e.g.
    ``ladder_densenet121`` → ``densenet121``, ``ssd300_vgg16`` → ``vgg16``)."""
    match = _BACKBONE_IN_NAME.search(model_name)
    if match is None or match.group(1) not in IMAGENET_URLS:
        raise ArgumentError(f"backbone_weights: no ImageNet weights are known for model {model_name!r} "
                            f"(known backbones: {', '.join(IMAGENET_URLS)}); give a weights file instead")
    return match.group(1)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights(backbone: str, *, progress: bool = True) -> str:
    """The path of ``backbone``'s ImageNet checkpoint in the torch hub cache, downloaded from
    :data:`IMAGENET_URLS` when not there yet; its SHA-256 must start with the digits of its name.

    Raises:
        CheckpointError: the download failed (naming the URL and the cache path to put the file
            in by hand), or the file's hash does not match (a cached file that does not match is
            named, not replaced).
    """
    if backbone not in IMAGENET_URLS:
        raise ArgumentError(f"backbone must be one of {tuple(IMAGENET_URLS)}, got {backbone!r}")
    url = IMAGENET_URLS[backbone]
    name = os.path.basename(urlparse(url).path)
    match = _HASH_IN_NAME.search(name)
    prefix = match.group(1) if match else ""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        digest = _sha256(path)
        if not digest.startswith(prefix):
            raise CheckpointError(f"{path}: SHA-256 {digest[:len(prefix)]}… does not match the {prefix} of "
                                  f"its name (a damaged download?); delete it to fetch {url} again")
        return path
    os.makedirs(folder, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=prefix or None, progress=progress)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise CheckpointError(f"cannot download {url} ({reason}); without network access, put that file "
                              f"at {path}") from error
    except RuntimeError as error:  # torch.hub's hash check (the partial file is deleted)
        raise CheckpointError(f"{url}: the downloaded file does not match SHA-256 prefix {prefix} "
                              f"({error}); nothing was written to {path}") from error
    return path


def resolve_backbone_weights(value: Optional[str], model_name: str, *,
                             progress: bool = True) -> Optional[str]:
    """``backbone_weights`` as a model builder takes it: None stays None, ``"imagenet"`` becomes the
    cached torchvision checkpoint of the model's backbone (:func:`imagenet_weights`), anything
    else is a file path, returned as it is."""
    if value is None:
        return None
    if value == "imagenet":
        return imagenet_weights(backbone_of(model_name), progress=progress)
    return value
