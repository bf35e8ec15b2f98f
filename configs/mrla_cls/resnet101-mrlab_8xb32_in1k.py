# ResNet-101 with MRLA-base and the deep stem (Fang et al., ICLR 2023),
# ImageNet-1k, with the authors' ResNet recipe of
# resnet50-mrlal_8xb32_in1k.py (100 epochs, batch 256, SGD lr 0.1, 3 warm-up
# epochs, x0.1 at 30/60/90, MRLA drop path 0.2).
_base_ = './resnet50-mrlab_8xb32_in1k.py'

model = dict(backbone=dict(depth=101))
