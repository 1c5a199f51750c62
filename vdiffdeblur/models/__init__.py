"""Every network of vdiffdeblur, each a diffusers ModelMixin + ConfigMixin. Import submodules directly
(`from vdiffdeblur.models.blur_encoder import BlurImageEncoder`); the names below load lazily so that importing
one model does not pull in the others' dependencies."""

_LAZY = {
    "BlurImageEncoder": "vdiffdeblur.models.blur_encoder",
    "widen_conv_in": "vdiffdeblur.models.unet",
    "enable_unet_gradient_checkpointing": "vdiffdeblur.models.unet",
    "disable_unet_gradient_checkpointing": "vdiffdeblur.models.unet",
    "BlurCondition": "vdiffdeblur.models.conditioning",
    "encode_condition": "vdiffdeblur.models.conditioning",
    "build_unet_input": "vdiffdeblur.models.conditioning",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vdiffdeblur.models' has no attribute {name!r}")
