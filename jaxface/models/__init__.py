"""flax.linen modules; ``apply`` is pure. Backbones expose their stages.

``resnet`` (ResNet-18/34/50, torchvision layout, NHWC), ``dream`` (yaw gate, DREAM
block, face embedder), ``cnn`` (compact CPU trunk),
``attributes`` (shared-trunk attribute net), ``scaleface`` (the multi-branch detector).
"""
