# A ResNet-18 with MRLA-light trained from scratch on the small folder
# dataset of tools/misc/make_cls_demo_dataset.py (4 pattern classes, 32x32
# images, mmpretrain CustomDataset layout), evaluated for top-1 accuracy.
# Sized to run on a CPU in about a minute: 100 iterations at batch 16,
# AdamW, cosine schedule; MRLA-light with d = 32 after every basic block.
#   python tools/misc/make_cls_demo_dataset.py data/cls_demo
#   python tools/train.py configs/mrla_cls/resnet18-mrlal_demo_folder.py
# Its checkpoint starts the backbone of
# configs/demo/mask-rcnn_r18-mrlal-clsdemo-pre_fpn_demo.py.
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    'mmpretrain::_base_/default_runtime.py'
]
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

data_root = 'data/cls_demo'
classes = ('checker', 'disc', 'stripes_h', 'stripes_v')

model = dict(
    data_preprocessor=dict(
        num_classes=len(classes),
        mean=[127.5, 127.5, 127.5],
        std=[64.0, 64.0, 64.0],
        to_rgb=True),
    backbone=dict(
        type='MRLAResNet',
        stem_channels=16,
        base_channels=16,
        mrla_cfg=dict(type='MRLALight', dim_per_head=16)),
    head=dict(in_channels=128, num_classes=len(classes), topk=(1, )))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
dataset_type = 'CustomDataset'
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='train',
        classes=classes,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='val',
        classes=classes,
        pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=3e-3, weight_decay=0.05))
param_scheduler = dict(
    type='CosineAnnealingLR', by_epoch=False, T_max=100, eta_min=1e-5)
train_cfg = dict(by_epoch=False, max_iters=100, val_interval=100)
val_cfg = dict()
test_cfg = dict()

log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=1))
randomness = dict(seed=0)
