"""diffusers pipelines of vdiffdeblur (shipped as `vdiffdeblur.pipelines`)."""

from .pipeline_deblur_video import (
    DeblurVideoPipeline,
    DeblurVideoPipelineOutput,
    DeblurVideoStream,
    ModelFolderError,
)

__all__ = ["DeblurVideoPipeline", "DeblurVideoPipelineOutput", "DeblurVideoStream", "ModelFolderError"]
