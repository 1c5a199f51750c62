"""Image encoder 2 of the diffusion deblurrer: a CLIP vision tower plus a projector to cross-attention tokens.

The tower is transformers' ``CLIPVisionModelWithProjection`` (the diffusers-format OpenCLIP ViT-H-14, as
i2vgen-xl ships it), built from a ``vision_config`` dict so the whole encoder saves as one diffusers model
(config.json + safetensors). The projector is TF-T2V's Linear-SiLU-Linear, turning each image embedding into
``num_tokens`` tokens of width ``cross_attention_dim``. Preprocessing (resize, CLIP mean/std) happens inside
``forward`` on [0, 1] input, so gradients reach the pixels during training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

logger = logging.getLogger(__name__)

#: the OpenAI CLIP normalisation, used by the OpenCLIP ViT-H-14 tower too
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The CLIPVisionConfig fields that define the architecture (kept explicit so a saved config does not depend
# on the transformers version that wrote it).
VISION_CONFIG_KEYS = (
    "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
    "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps",
)


def vision_config_dict(config: CLIPVisionConfig | dict) -> dict:
    """The architecture fields of a CLIP vision config, as a plain JSON-able dict."""
    d = config.to_dict() if isinstance(config, CLIPVisionConfig) else dict(config)
    out = {k: d[k] for k in VISION_CONFIG_KEYS if k in d}
    for k, v in out.items():
        if isinstance(v, (tuple, list)):
            out[k] = list(v)
    return out


def select_condition_frames(num_frames: int, num_cond_frames: int = 1) -> list[int]:
    """Indices of the conditioning frames of a clip: its central frame (``num_cond_frames=1``, the paper's
    choice) or ``num_cond_frames`` evenly spaced frames, first and last included."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if num_cond_frames < 1:
        raise ValueError(f"num_cond_frames must be >= 1, got {num_cond_frames}")
    if num_cond_frames == 1:
        return [num_frames // 2]
    return torch.linspace(0, num_frames - 1, num_cond_frames).round().long().tolist()


class BlurImageEncoder(ModelMixin, ConfigMixin):
    r"""Encodes a blurry clip into cross-attention tokens for the deblurring UNet.

    Args:
        vision_config (`dict`): fields of a transformers `CLIPVisionConfig` (see `VISION_CONFIG_KEYS`).
        num_tokens (`int`, defaults to 4): tokens per conditioning frame.
        cross_attention_dim (`int`, defaults to 1024): token width, the UNet's `cross_attention_dim`.
        projector_hidden_dim (`int`, *optional*): hidden width of the projector; defaults to `cross_attention_dim`.
        num_cond_frames (`int`, defaults to 1): 1 = the clip's central frame; K > 1 = K evenly spaced frames
            (their tokens are concatenated, giving `K * num_tokens` tokens).
        image_mean, image_std: CLIP normalisation.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        vision_config: dict | None = None,
        num_tokens: int = 4,
        cross_attention_dim: int = 1024,
        projector_hidden_dim: int | None = None,
        num_cond_frames: int = 1,
        image_mean: tuple[float, ...] = CLIP_MEAN,
        image_std: tuple[float, ...] = CLIP_STD,
    ):
        super().__init__()
        if vision_config is None:
            raise ValueError("BlurImageEncoder needs a vision_config (the fields of a CLIPVisionConfig)")
        if num_tokens < 1 or num_cond_frames < 1:
            raise ValueError(f"num_tokens and num_cond_frames must be >= 1, got {num_tokens}, {num_cond_frames}")
        cfg = CLIPVisionConfig(**vision_config)
        self.clip = CLIPVisionModelWithProjection(cfg)
        hidden = projector_hidden_dim or cross_attention_dim
        self.projector = nn.Sequential(
            nn.Linear(cfg.projection_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, num_tokens * cross_attention_dim),
        )
        size = cfg.image_size
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        self.register_buffer("mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)

    # ----------------------------------------------------------------------------------------- forward
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (N, 3, H, W) -> CLIP pixel values (N, 3, S, S): whole-frame antialiased bicubic resize
        (no crop, so the whole frame conditions) and CLIP mean/std. Differentiable."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        # resize and normalise in float32 (antialiased resize has no half-precision CPU kernel), then cast
        x = images.float()
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
        return ((x - self.mean.float()) / self.std.float()).to(self.dtype)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (N, 3, H, W) -> CLIP image embeddings (N, projection_dim). Training's teacher loss compares
        these between image encoder 1 (frozen) and this encoder."""
        return self.clip(pixel_values=self.preprocess(images)).image_embeds

    def tokens_from_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Image embeddings (N, projection_dim) -> tokens (N, num_tokens, cross_attention_dim)."""
        d = self.config.cross_attention_dim
        return self.projector(image_embeds).view(image_embeds.shape[0], self.config.num_tokens, d)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Blurry clip in [0, 1] -> cross-attention tokens.

        Args:
            frames: `(B, 3, F, H, W)` (a clip: its conditioning frames are picked, see `num_cond_frames`) or
                `(B, 3, H, W)` (one conditioning image per sample).
        Returns:
            `(B, T, cross_attention_dim)` with `T = num_tokens * num_cond_frames` (`num_tokens` for 4D input).
        """
        if frames.ndim == 4:
            images, k = frames, 1
        elif frames.ndim == 5:
            if frames.shape[1] != 3:
                raise ValueError(f"expected a clip (B, 3, F, H, W), got shape {tuple(frames.shape)}")
            idx = select_condition_frames(frames.shape[2], self.config.num_cond_frames)
            k = len(idx)
            images = frames[:, :, idx].permute(0, 2, 1, 3, 4).reshape(-1, 3, *frames.shape[-2:])
        else:
            raise ValueError(f"expected frames (B, 3, F, H, W) or (B, 3, H, W), got shape {tuple(frames.shape)}")
        tokens = self.tokens_from_embeds(self.embed_images(images))
        return tokens.reshape(frames.shape[0], k * self.config.num_tokens, self.config.cross_attention_dim)

    # ----------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_clip_vision(cls, path, **kwargs) -> "BlurImageEncoder":
        """Initialise from a local transformers CLIP vision folder (config.json + weights of a
        `CLIPVisionModelWithProjection`, e.g. the OpenCLIP ViT-H-14 `image_encoder/` of i2vgen-xl). The projector
        starts from a fresh (seeded by the caller) initialisation. `kwargs` go to the constructor."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a transformers CLIP vision folder (no config.json)")
        clip = CLIPVisionModelWithProjection.from_pretrained(path)
        mean_std = _read_preprocessor_mean_std(path)
        if mean_std is not None:
            kwargs.setdefault("image_mean", mean_std[0])
            kwargs.setdefault("image_std", mean_std[1])
        return cls._from_tower(clip.config, clip.state_dict(), **kwargs)

    @classmethod
    def from_open_clip(cls, model_name: str, checkpoint_path=None, **kwargs) -> "BlurImageEncoder":
        """Initialise from an open_clip checkpoint through open-clip-torch (nothing is downloaded).

        Args:
            model_name: an open_clip architecture name (built in, e.g. `"ViT-H-14"`, or registered with
                `open_clip.add_model_config`), or `"local-dir:PATH"` (a folder with `open_clip_config.json` and
                the weights; then `checkpoint_path` is not used).
            checkpoint_path: the local open_clip weights file (.safetensors, or .bin/.pt read with weights_only).
        """
        model = load_open_clip_model(model_name, checkpoint_path)
        vision_config, state = open_clip_visual_to_transformers(model)
        mean = getattr(model.visual, "image_mean", None)
        std = getattr(model.visual, "image_std", None)
        if mean is not None and std is not None:
            kwargs.setdefault("image_mean", tuple(float(v) for v in mean))
            kwargs.setdefault("image_std", tuple(float(v) for v in std))
        return cls._from_tower(CLIPVisionConfig(**vision_config), state, **kwargs)

    @classmethod
    def _from_tower(cls, vision_config: CLIPVisionConfig, clip_state: dict, **kwargs) -> "BlurImageEncoder":
        kwargs.setdefault("cross_attention_dim", vision_config.projection_dim)
        enc = cls(vision_config=vision_config_dict(vision_config), **kwargs)
        missing, unexpected = enc.clip.load_state_dict(clip_state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"CLIP vision weights do not fit the tower: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return enc


def _read_preprocessor_mean_std(path: Path):
    f = path / "preprocessor_config.json"
    if not f.is_file():
        return None
    cfg = json.loads(f.read_text())
    if "image_mean" in cfg and "image_std" in cfg:
        return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return None


# --------------------------------------------------------------------------------------------- open_clip
def load_open_clip_model(model_name: str, checkpoint_path=None):
    """An open_clip model from local files only (hf-hub names and pretrained tags are refused: no downloads)."""
    import open_clip

    if model_name.startswith("hf-hub:"):
        raise ValueError(f"{model_name}: hf-hub models are not loaded (nothing downloads); give a local checkpoint")
    if model_name.startswith("local-dir:"):
        folder = Path(model_name.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{folder}: no open_clip_config.json")
        return open_clip.create_model(model_name, device="cpu").eval()
    if checkpoint_path is None or not Path(checkpoint_path).is_file():
        raise FileNotFoundError(f"open_clip checkpoint {checkpoint_path!r} is not a file")
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; register its config with "
                         "open_clip.add_model_config or use local-dir:PATH")
    return open_clip.create_model(model_name, pretrained=str(checkpoint_path), device="cpu").eval()


def open_clip_visual_to_transformers(model) -> tuple[dict, dict]:
    """Map an open_clip ViT image tower onto transformers' CLIPVisionModelWithProjection.

    Returns `(vision_config dict, state_dict)`. Only the standard CLIP ViT tower is supported (class-token
    pooling, learnable positions, LayerNorm before the transformer, no layer scale / attentional pooler).
    """
    from open_clip.transformer import QuickGELU, VisionTransformer

    v = model.visual
    if not isinstance(v, VisionTransformer):
        raise ValueError(f"only open_clip ViT towers convert, got {type(v).__name__}")
    unsupported = []
    if v.attn_pool is not None:
        unsupported.append("attentional pooler")
    if v.pool_type != "tok" or v.final_ln_after_pool:
        unsupported.append(f"pooling {v.pool_type!r}{' with final LN after pool' if v.final_ln_after_pool else ''}")
    if isinstance(v.ln_pre, nn.Identity):
        unsupported.append("no ln_pre")
    if v.proj is None:
        unsupported.append("no projection")
    blocks = list(v.transformer.resblocks)
    b0 = blocks[0]
    if not isinstance(getattr(b0, "attn", None), nn.MultiheadAttention):
        unsupported.append(f"attention block {type(b0).__name__}")
    if not isinstance(getattr(b0, "ls_1", nn.Identity()), nn.Identity):
        unsupported.append("layer scale")
    if unsupported:
        raise ValueError("open_clip tower not convertible to CLIPVisionModelWithProjection: " + ", ".join(unsupported))

    width = v.conv1.out_channels
    act = b0.mlp.gelu if hasattr(b0.mlp, "gelu") else None
    hidden_act = "quick_gelu" if isinstance(act, QuickGELU) else "gelu"
    image_size = v.image_size[0] if v.image_size[0] == v.image_size[1] else list(v.image_size)
    patch = v.patch_size[0]
    config = {
        "hidden_size": width,
        "intermediate_size": b0.mlp.c_fc.out_features,
        "projection_dim": v.proj.shape[1],
        "num_hidden_layers": len(blocks),
        "num_attention_heads": b0.attn.num_heads,
        "num_channels": v.conv1.in_channels,
        "image_size": image_size,
        "patch_size": patch,
        "hidden_act": hidden_act,
        "layer_norm_eps": float(v.ln_pre.eps),
    }
    sd = {
        "vision_model.embeddings.patch_embedding.weight": v.conv1.weight,
        "vision_model.embeddings.class_embedding": v.class_embedding,
        "vision_model.embeddings.position_embedding.weight": v.positional_embedding,
        "vision_model.pre_layrnorm.weight": v.ln_pre.weight,
        "vision_model.pre_layrnorm.bias": v.ln_pre.bias,
        "vision_model.post_layernorm.weight": v.ln_post.weight,
        "vision_model.post_layernorm.bias": v.ln_post.bias,
        "visual_projection.weight": v.proj.t(),
    }
    for i, blk in enumerate(blocks):
        p = f"vision_model.encoder.layers.{i}."
        q, k, val = blk.attn.in_proj_weight.chunk(3, dim=0)
        qb, kb, vb = blk.attn.in_proj_bias.chunk(3, dim=0)
        sd.update({
            p + "self_attn.q_proj.weight": q, p + "self_attn.q_proj.bias": qb,
            p + "self_attn.k_proj.weight": k, p + "self_attn.k_proj.bias": kb,
            p + "self_attn.v_proj.weight": val, p + "self_attn.v_proj.bias": vb,
            p + "self_attn.out_proj.weight": blk.attn.out_proj.weight,
            p + "self_attn.out_proj.bias": blk.attn.out_proj.bias,
            p + "layer_norm1.weight": blk.ln_1.weight, p + "layer_norm1.bias": blk.ln_1.bias,
            p + "layer_norm2.weight": blk.ln_2.weight, p + "layer_norm2.bias": blk.ln_2.bias,
            p + "mlp.fc1.weight": blk.mlp.c_fc.weight, p + "mlp.fc1.bias": blk.mlp.c_fc.bias,
            p + "mlp.fc2.weight": blk.mlp.c_proj.weight, p + "mlp.fc2.bias": blk.mlp.c_proj.bias,
        })
    return config, {k: t.detach().clone().contiguous() for k, t in sd.items()}
