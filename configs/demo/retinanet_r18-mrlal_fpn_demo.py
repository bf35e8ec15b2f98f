# RetinaNet with an MRLA-light ResNet-18 backbone on the synthetic shapes
# dataset of tools/misc/make_demo_dataset.py (4 classes, 128x128 images):
# the demo Mask R-CNN's half-width three-stage ResNet-18 and 64-wide FPN,
# a two-conv RetinaNet head. Sized for CPU runs and for the ONNX export
# checks (docs/deployment.md):
#   python tools/misc/make_demo_dataset.py data/demo_shapes
#   python tools/train.py configs/demo/retinanet_r18-mrlal_fpn_demo.py
#   python tools/deployment/export_onnx.py \
#       configs/demo/retinanet_r18-mrlal_fpn_demo.py CKPT retinanet.onnx \
#       --part model --shape 128 128
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py'
]
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

classes = ('circle', 'square', 'triangle', 'star')
img_scale = (128, 128)
fpn_channels = 64

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='MRLAResNet',
        depth=18,
        base_channels=32,
        stem_channels=32,
        num_stages=3,
        strides=(1, 2, 2),
        dilations=(1, 1, 1),
        out_indices=(0, 1, 2),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        mrla_cfg=dict(type='MRLALight'),
        init_cfg=None),
    neck=dict(
        in_channels=[32, 64, 128],
        out_channels=fpn_channels,
        start_level=0,
        num_outs=4),
    bbox_head=dict(
        num_classes=len(classes),
        in_channels=fpn_channels,
        feat_channels=fpn_channels,
        stacked_convs=2,
        anchor_generator=dict(octave_base_scale=2, strides=[4, 8, 16, 32])))

data_root = 'data/demo_shapes/'
metainfo = dict(classes=classes)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    batch_sampler=None,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100)
]
auto_scale_lr = dict(base_batch_size=8)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=4, max_keep_ckpts=1))
log_processor = dict(window_size=10)
randomness = dict(seed=0)
