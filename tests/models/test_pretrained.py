"""Backbone weights by name: the ImageNet checkpoints fetched into the torch hub cache, hash checked
(served here from a local file:// URL: no network in tests)."""
import hashlib
import os

import pytest
import torch

from fastladder.errors import CheckpointError
from fastladder.models import create_model, pretrained
from fastladder.models.pretrained import backbone_of, imagenet_weights, resolve_backbone_weights

TINY_DENSENET = dict(growth_rate=4, block_config=[1, 1, 1, 2], num_init_features=8)
TINY_LDN = dict(TINY_DENSENET, context_channels=16, upsample_channels=8)


def _serve(tmp_path, monkeypatch, backbone, state_dict, corrupt=False):
    """Writes ``state_dict`` as ``{backbone}-{sha256[:8]}.pth`` and points the URL table at it."""
    source = tmp_path / "server" / "file.pth"
    source.parent.mkdir(exist_ok=True)
    torch.save(state_dict, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    name = f"{backbone}-{'0' * 8 if corrupt else digest[:8]}.pth"
    source = source.rename(source.parent / name)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, backbone, source.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return source, tmp_path / "torch-home" / "hub" / "checkpoints" / name


def test_imagenet_weights_are_fetched_once_into_the_hub_cache(tmp_path, monkeypatch, seed):
    torchvision_like = create_model("densenet121", 1000, **TINY_DENSENET).state_dict()
    source, cached = _serve(tmp_path, monkeypatch, "densenet121", torchvision_like)
    model = create_model("ladder_densenet121", 19,
                         backbone_weights=resolve_backbone_weights("imagenet", "ladder_densenet121",
                                                                   progress=False), **TINY_LDN)
    assert cached.is_file()
    for key, value in model.features.state_dict().items():
        torch.testing.assert_close(value, torchvision_like[f"features.{key}"], rtol=0, atol=0, msg=key)
    # a second call reads the cache: the "server" may be gone
    source.unlink()
    assert imagenet_weights("densenet121", progress=False) == str(cached)


def test_a_download_with_the_wrong_hash_is_refused_and_not_kept(tmp_path, monkeypatch, seed):
    _, cached = _serve(tmp_path, monkeypatch, "vgg16", {"features.0.weight": torch.randn(2)}, corrupt=True)
    with pytest.raises(CheckpointError, match="does not match SHA-256 prefix 00000000"):
        imagenet_weights("vgg16", progress=False)
    assert not cached.exists() and not any(cached.parent.iterdir())


def test_offline_names_the_url_and_the_cache_path(tmp_path, monkeypatch):
    missing = (tmp_path / "offline" / "vgg16-397923af.pth").as_uri()
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "vgg16", missing)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cache = os.path.join(str(tmp_path / "home"), "hub", "checkpoints", "vgg16-397923af.pth")
    with pytest.raises(CheckpointError, match=f"cannot download {missing} .*put that file at {cache}"):
        resolve_backbone_weights("imagenet", "ssd300_vgg16", progress=False)


def test_backbones_of_the_registered_models():
    assert backbone_of("ladder_densenet169") == "densenet169"
    assert backbone_of("dilated8_densenet121") == "densenet121"
    assert backbone_of("ssd512_vgg16") == "vgg16" and backbone_of("densenet201") == "densenet201"
    assert resolve_backbone_weights(None, "ssd300_vgg16") is None
    assert resolve_backbone_weights("my.pth", "ssd300_vgg16") == "my.pth"
