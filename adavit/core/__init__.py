"""The model: config and settings, the detail gate and mixed-scale patching, attention masks, ATS
samplers, stages over timm's own blocks, AdaViT itself, its trace, and the one-call timm plug-in.

Imports nothing from the other subpackages: this is what a user needs to run the model.
"""
