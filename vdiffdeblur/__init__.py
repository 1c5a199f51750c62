"""vdiffdeblur: remove motion blur from videos.

`import vdiffdeblur` stays cheap: the diffusion pipeline (torch, diffusers, transformers) is imported on first
use of `vdiffdeblur.DeblurVideoPipeline`.
"""

_LAZY = {
    "DeblurVideoPipeline": "vdiffdeblur.pipelines",
    "DeblurVideoPipelineOutput": "vdiffdeblur.pipelines",
    "DeblurVideoStream": "vdiffdeblur.pipelines",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vdiffdeblur' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
