# DeiT-small with MRLA-light after every encoder layer (Fang et al., ICLR
# 2023), ImageNet-1k at 224x224: mmpretrain's DeiT recipe (300 epochs, batch
# 1024 = 4 GPUs x 256, AdamW lr 1e-3, weight decay 0.05, cosine, Mixup/
# CutMix, label smoothing) with the authors' DeiT-script defaults:
# stochastic depth 0.1 and 5 warm-up epochs. MRLA-light: d = 16 (24 heads).
_base_ = 'mmpretrain::deit/deit-small_4xb256_in1k.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='MRLAVisionTransformer',
        drop_path_rate=0.1,
        mrla_cfg=dict(type='MRLALight')))

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
