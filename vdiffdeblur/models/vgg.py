"""VGG feature extractors loaded from local weight files (nothing downloads): VGG-16 for LPIPS and VGG-19
for the perceptual loss. Torchvision's layer numbering (``features.N``) is kept so its state dicts load."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

CFGS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _relu_names(depth: int) -> dict[int, str]:
    """features index of each ReLU -> its conventional name (relu1_1, ...)."""
    names, block, conv, idx = {}, 1, 0, 0
    for v in CFGS[depth]:
        if v == "M":
            block, conv, idx = block + 1, 0, idx + 1
        else:
            conv += 1
            names[idx + 1] = f"relu{block}_{conv}"
            idx += 2
    return names


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a torch file read with ``weights_only=True`` (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd


class VGGFeatures(ModelMixin, ConfigMixin):
    """``features`` of a torchvision VGG; ``forward(x)`` takes RGB in [0, 1] and returns the requested ReLU maps."""

    @register_to_config
    def __init__(self, depth: int = 19, layers: tuple = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"),
                 normalize_imagenet: bool = True):
        super().__init__()
        if depth not in CFGS:
            raise ValueError(f"VGG depth must be 16 or 19, got {depth}")
        mods, c = [], 3
        for v in CFGS[depth]:
            if v == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        names = _relu_names(depth)
        wanted = {n: i for i, n in names.items()}
        missing = [l for l in layers if l not in wanted]
        if missing:
            raise ValueError(f"unknown VGG{depth} layers {missing}; available: {sorted(wanted)}")
        self.taps = {wanted[l]: l for l in layers}
        last = max(self.taps)
        self.features = nn.Sequential(*mods[: last + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.normalize_imagenet:
            x = (x - self.mean) / self.std
        side = 2 ** sum(isinstance(m, nn.MaxPool2d) for m in self.features)
        if min(x.shape[-2:]) < side:  # every max-pool halves the map: smaller images are edge-padded so none empties
            x = nn.functional.pad(x, (0, max(0, side - x.shape[-1]), 0, max(0, side - x.shape[-2])), mode="replicate")
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out

    def load_torchvision(self, state_dict: dict) -> "VGGFeatures":
        own = self.features.state_dict()
        sd = {k[len("features."):]: v for k, v in state_dict.items() if k.startswith("features.")}
        missing = [k for k in own if k not in sd]
        if missing:
            raise ValueError(f"VGG weights lack {len(missing)} feature tensors (first: features.{missing[0]}); "
                             f"is this a torchvision vgg{self.config.depth} state dict?")
        for k, v in own.items():
            if sd[k].shape != v.shape:
                raise ValueError(f"VGG weight features.{k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
        self.features.load_state_dict({k: sd[k] for k in own})
        return self


class LPIPSVGG(ModelMixin, ConfigMixin):
    """LPIPS with the VGG-16 backbone: unit-normalised ReLU maps, squared differences, learned 1x1 weights."""

    LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    CHANNELS = (64, 128, 256, 512, 512)

    @register_to_config
    def __init__(self):
        super().__init__()
        self.vgg = VGGFeatures(depth=16, layers=self.LAYERS, normalize_imagenet=False)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_weights_file(cls, path) -> "LPIPSVGG":
        sd = load_state_dict_file(path)
        net = cls()
        net.vgg.load_torchvision(sd)
        for i, lin in enumerate(net.lins):
            key = next((k for k in (f"lin{i}.model.1.weight", f"lins.{i}.model.1.weight", f"lins.{i}.weight")
                        if k in sd), None)
            if key is None:
                raise ValueError(f"{path}: LPIPS linear head lin{i}.model.1.weight is missing")
            lin.weight.data.copy_(sd[key].reshape(lin.weight.shape))
        return net

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (N, 3, H, W) in [0, 1] -> (N,) distances."""
        fx = self.vgg((x * 2 - 1 - self.shift) / self.scale)
        fy = self.vgg((y * 2 - 1 - self.shift) / self.scale)
        total = 0
        for lin, name in zip(self.lins, self.LAYERS):
            a = fx[name] / (fx[name].norm(dim=1, keepdim=True) + 1e-10)
            b = fy[name] / (fy[name].norm(dim=1, keepdim=True) + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total
