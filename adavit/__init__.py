"""AdaViT: adaptive-token Vision Transformers on timm.

    import adavit
    model = adavit.load_model()                       # the shipped Flowers-102 checkpoint
    pred = model(images, adavit.Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5))
    pred.logits, pred.tokens_per_stage, pred.traces()

    adavit.patch(timm_vit, keep=(0.5, 0.5))           # ATS on any timm VisionTransformer, in place
    adavit.set_sampling(timm_vit, keep=(0.7, 0.4), mode="sample", fuse=True)
    adavit.unpatch(timm_vit)
"""
from .checkpoint import from_backbone, load_model
from .config import AdaViTConfig, Sampling, Settings
from .model import AdaViT, Prediction
from .plugin import is_patched, patch, set_sampling, unpatch
from .trace import StageTrace, Trace

__all__ = [
    "AdaViT", "AdaViTConfig", "Prediction", "Sampling", "Settings", "StageTrace", "Trace",
    "from_backbone", "is_patched", "load_model", "patch", "set_sampling", "unpatch",
]
