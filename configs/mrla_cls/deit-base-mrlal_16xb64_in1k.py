# DeiT-base with MRLA-light after every encoder layer (Fang et al., ICLR
# 2023), ImageNet-1k at 224x224: mmpretrain's DeiT-base recipe (300 epochs,
# batch 1024 = 16 GPUs x 64, AdamW lr 1e-3, weight decay 0.05, cosine,
# Mixup/CutMix, label smoothing, stochastic depth 0.1, EMA) with the 5
# warm-up epochs of the authors' DeiT script. MRLA-light: d = 16 (48 heads).
_base_ = 'mmpretrain::deit/deit-base_16xb64_in1k.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='MRLAVisionTransformer', mrla_cfg=dict(type='MRLALight')))

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5)
]
