"""AdaViT: adaptive-token Vision Transformers on timm.

    import adavit
    model = adavit.load_model()                       # the shipped Flowers-102 checkpoint
    pred = model(images, adavit.Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5))
    pred.logits, pred.tokens_per_stage, pred.traces()

    adavit.patch(timm_vit, keep=(0.5, 0.5))           # ATS on any timm VisionTransformer, in place
"""
from .checkpoint import from_backbone, load_model
from .config import AdaViTConfig, Sampling, Settings
from .model import AdaViT, Prediction
from .trace import StageTrace, Trace

__all__ = [
    "AdaViT", "AdaViTConfig", "Prediction", "Sampling", "Settings", "StageTrace", "Trace",
    "from_backbone", "load_model",
]
