"""The perceptual loss of the fit-to-test-data method (paper eq. 2) on VGG-19 features from a local file.

Two weight formats are read, and both end up as the same :class:`~vdiffdeblur.models.vgg.VGGFeatures`:

- torchvision's ``vgg19`` state dict (``.pth`` / ``.pt`` read with ``weights_only=True``, or ``.safetensors``);
- MatConvNet's ``imagenet-vgg-verydeep-19.mat`` (simplenn layout), the file the paper's reference code
  asked for. Its filters are ``H x W x in x out`` for RGB input in 0..255 minus the average pixel; they are
  transposed to torchvision's ``out x in x H x W`` and the first convolution absorbs the change of input
  normalisation (0..255 minus the average pixel -> torchvision's ImageNet mean / std on 0..1), so the two
  networks compute the same features.

Nothing downloads. Without a weights file the loss falls back to a pixel loss (L1 plus L1 of image
gradients, :func:`vdiffdeblur.losses.pixel_loss_per_sample`) and warns once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..losses import l1_per_sample, pixel_loss_per_sample
from .vgg import CFGS, IMAGENET_MEAN, IMAGENET_STD, VGGFeatures, load_state_dict_file

#: MatConvNet's VGG average pixel (RGB, 0..255), used when the file does not carry its own.
MATCONVNET_AVERAGE_PIXEL = (123.68, 116.779, 103.939)
#: layers and weights of the perceptual loss used by the authors' group (Zhang, Ng & Chen 2018)
DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
DEFAULT_LAYER_WEIGHTS = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)
_VGG19_CONVS = [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 4, 4, 4)) for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------- MatConvNet
def _field(obj, name, default=None):
    return getattr(obj, name, default) if not isinstance(obj, dict) else obj.get(name, default)


def _average_pixel(mat) -> np.ndarray:
    for holder in (_field(_field(mat, "meta"), "normalization"), _field(mat, "normalization")):
        avg = _field(holder, "averageImage") if holder is not None else None
        if avg is not None:
            avg = np.asarray(avg, dtype=np.float64)
            if avg.size >= 3:
                return avg.reshape(-1, 3).mean(0)  # an average pixel, or a whole average image
    return np.asarray(MATCONVNET_AVERAGE_PIXEL, dtype=np.float64)


def load_matconvnet_vgg19(path) -> dict[str, torch.Tensor]:
    """Read ``imagenet-vgg-verydeep-19.mat`` into a torchvision ``vgg19`` ``features.*`` state dict."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VGG weights file not found")
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError / TypeError / MatReadError for files it cannot parse
        raise ValueError(f"{path}: not a readable MatConvNet .mat file ({e.__class__.__name__}: {e})") from None
    layers = mat.get("layers")
    if layers is None:
        raise ValueError(f"{path}: no 'layers' in this .mat file; expected MatConvNet's simplenn "
                         "imagenet-vgg-verydeep-19.mat")
    convs = []
    for layer in np.atleast_1d(layers):
        if str(_field(layer, "type", "")) != "conv":
            continue
        w = np.atleast_1d(_field(layer, "weights", []))
        if len(w) != 2:
            raise ValueError(f"{path}: conv layer {_field(layer, 'name', '?')} lacks [filters, biases]")
        convs.append((str(_field(layer, "name", "")), np.asarray(w[0], np.float64), np.asarray(w[1], np.float64)))
    names = [n for n, _, _ in convs]
    if all(n in names for n in _VGG19_CONVS):
        convs = [convs[names.index(n)] for n in _VGG19_CONVS]
    else:
        convs = convs[: len(_VGG19_CONVS)]
    widths = [v for v in CFGS[19] if v != "M"]
    if len(convs) != len(widths):
        raise ValueError(f"{path}: found {len(convs)} convolutions, VGG-19 has {len(widths)}")
    avg = _average_pixel(mat)
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    sd, cin = {}, 3
    for i, ((name, w, b), cout, idx) in enumerate(zip(convs, widths, _conv_indices())):
        if w.shape != (3, 3, cin, cout):
            raise ValueError(f"{path}: filters of {name or f'conv #{i + 1}'} have shape {w.shape}, "
                             f"expected (3, 3, {cin}, {cout}) (MatConvNet H x W x in x out)")
        wt = w.transpose(3, 2, 0, 1).copy()  # -> out, in, H, W
        b = b.reshape(-1).copy()
        if i == 0:
            # MatConvNet input u = 255 x - avg; torchvision input v = (x - mean) / std
            #   =>  u = 255 std v + (255 mean - avg)
            b = b + np.einsum("oihw,i->o", wt, 255.0 * mean - avg)
            wt = wt * (255.0 * std)[None, :, None, None]
        sd[f"features.{idx}.weight"] = torch.from_numpy(wt.astype(np.float32))
        sd[f"features.{idx}.bias"] = torch.from_numpy(b.astype(np.float32))
        cin = cout
    return sd


def _conv_indices() -> list[int]:
    """Positions of VGG-19's convolutions in torchvision's ``features`` (conv, ReLU pairs and max-pools)."""
    out, idx = [], 0
    for v in CFGS[19]:
        if v == "M":
            idx += 1
        else:
            out.append(idx)
            idx += 2
    return out


def load_vgg19(path, layers=DEFAULT_LAYERS) -> VGGFeatures:
    """VGG-19 features from a local file: MatConvNet ``.mat``, torchvision ``.pth``/``.pt`` or ``.safetensors``."""
    path = Path(path)
    sd = load_matconvnet_vgg19(path) if path.suffix.lower() == ".mat" else load_state_dict_file(path)
    net = VGGFeatures(depth=19, layers=tuple(layers))
    try:
        net.load_torchvision(sd)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return net.eval()


# ---------------------------------------------------------------------------------------- the loss
_warned_fallback = False


def _warn_fallback_once():
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        msg = ("no VGG-19 weights given: the perceptual loss falls back to a pixel loss (L1 + L1 of image "
               "gradients); pass a local torchvision vgg19 .pth or MatConvNet imagenet-vgg-verydeep-19.mat")
        warnings.warn(msg, stacklevel=3)


class PerceptualLoss(nn.Module):
    """Eq. 2, ``sum_l lambda_l ||Phi_l(L) - Phi_l(G(I))||_1`` (+ a pixel L1 term), one value per sample.

    Args:
        vgg_weights: local VGG-19 weights file, or None for the pixel fallback (warns once).
        layers / layer_weights: the VGG layers Phi_l and their weights lambda_l.
        pixel_weight: weight of a plain L1 term on the images themselves.
        feature_scale: features are computed as MatConvNet's VGG sees 0..255 images; this brings them back to
            the 0..1 scale of the pixel term.
        gradient_weight: weight of the image-gradient term of the fallback.
    """

    def __init__(self, vgg_weights=None, layers=DEFAULT_LAYERS, layer_weights=DEFAULT_LAYER_WEIGHTS,
                 pixel_weight: float = 1.0, feature_scale: float = 1 / 255, gradient_weight: float = 1.0):
        super().__init__()
        if len(layers) != len(layer_weights):
            raise ValueError(f"{len(layers)} layers but {len(layer_weights)} layer weights")
        self.layers, self.layer_weights = tuple(layers), tuple(float(w) for w in layer_weights)
        self.pixel_weight, self.feature_scale, self.gradient_weight = pixel_weight, feature_scale, gradient_weight
        self.vgg = load_vgg19(vgg_weights, self.layers) if vgg_weights is not None else None
        if self.vgg is not None:
            self.vgg.requires_grad_(False)

    @property
    def uses_vgg(self) -> bool:
        return self.vgg is not None

    def per_sample(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N,) loss of each sample; images (N, 3, H, W) in [0, 1]."""
        if self.vgg is None:
            _warn_fallback_once()
            return pixel_loss_per_sample(pred, target, self.gradient_weight)
        loss = self.pixel_weight * l1_per_sample(pred, target)
        fp, ft = self.vgg(pred), self.vgg(target.detach())
        for name, lam in zip(self.layers, self.layer_weights):
            loss = loss + lam * self.feature_scale * l1_per_sample(fp[name], ft[name])
        return loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(pred, target).mean()
