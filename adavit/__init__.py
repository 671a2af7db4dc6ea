"""AdaViT: adaptive-token Vision Transformers on timm.

    import adavit
    model = adavit.load_model()                       # the shipped Flowers-102 checkpoint
    pred = model(images, adavit.Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5))
    pred.logits, pred.tokens_per_stage, pred.traces()

    adavit.patch(timm_vit, keep=(0.5, 0.5))           # ATS on any timm VisionTransformer, in place
    adavit.set_sampling(timm_vit, keep=(0.7, 0.4), mode="sample", fuse=True)
    adavit.unpatch(timm_vit)

Subpackages, in layer order (each imports only from those before it): core, weights, data, export,
measure, train, app. `python -m adavit --help` lists the commands.
"""
from .core.config import DEFAULT_SETTINGS, AdaViTConfig, Sampling, Settings
from .core.model import AdaViT, Prediction
from .core.plugin import is_patched, patch, set_sampling, unpatch
from .core.trace import StageTrace, Trace
from .weights.checkpoint import from_backbone, load_model

__all__ = [
    "DEFAULT_SETTINGS", "AdaViT", "AdaViTConfig", "Prediction", "Sampling", "Settings", "StageTrace", "Trace",
    "from_backbone", "is_patched", "load_model", "patch", "set_sampling", "unpatch",
]
