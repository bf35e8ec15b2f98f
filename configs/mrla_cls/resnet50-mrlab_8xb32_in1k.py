# ResNet-50 with MRLA-base after every bottleneck (Fang et al., ICLR 2023),
# ImageNet-1k: softmax attention over all earlier blocks of the stage
# (d = 16), with the deep stem of the authors' base model (three 3x3 convs,
# 3->32->32->64). Same recipe as resnet50-mrlal_8xb32_in1k.py: 100 epochs,
# batch 256, SGD lr 0.1, 3 warm-up epochs, x0.1 at 30/60/90, MRLA drop path
# 0.2.
_base_ = './resnet50-mrlal_8xb32_in1k.py'

model = dict(backbone=dict(mrla_cfg=dict(type='MRLABase'), deep_stem=True))
