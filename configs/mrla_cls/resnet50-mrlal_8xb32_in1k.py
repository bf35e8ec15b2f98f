# ResNet-50 with MRLA-light after every bottleneck (Fang et al., "Cross-Layer
# Retrospective Retrieving via Layer Attention", ICLR 2023), ImageNet-1k.
# The authors' ResNet recipe: 100 epochs at batch 256 (8 GPUs x 32), SGD
# (lr 0.1, momentum 0.9, weight decay 1e-4), 3 linear warm-up epochs, then
# lr x0.1 at epochs 30, 60 and 90; drop path 0.2 on the MRLA branch.
# MRLA-light: d = 32 channels per head, plain 7x7 stem (torchvision names).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='MRLAResNet',
        mrla_cfg=dict(type='MRLALight'),
        mrla_drop_path=0.2))

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        begin=0,
        end=3,
        convert_to_iter_based=True),
    dict(
        type='MultiStepLR',
        by_epoch=True,
        milestones=[30, 60, 90],
        gamma=0.1)
]
