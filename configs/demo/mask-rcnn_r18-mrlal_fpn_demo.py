# Mask R-CNN with an MRLA-light ResNet-18 backbone, trained from scratch on
# the synthetic shapes dataset of tools/misc/make_demo_dataset.py (4 classes,
# 128x128 images). Sized to learn on a 2-core CPU in minutes: half-width
# ResNet-18 with three stages, 64-wide FPN. On a CPU the RoI heads cost more
# than the backbone, so they are small: 32 sampled RoIs per image,
# torchvision's RoIAlign with one sample per bin (an object spans a few
# feature pixels, so a bin holds less than one), a 2-conv 32-wide mask head
# with bilinear upsampling, a GIoU box loss; 16 epochs of 50 iterations
# (8 images each), AdamW, cosine schedule.
# Run it through `make demo` (tools/misc/demo.py), or:
#   python tools/misc/make_demo_dataset.py data/demo_shapes
#   python tools/train.py configs/demo/mask-rcnn_r18-mrlal_fpn_demo.py
# No pretrained weights: the backbone starts from its default init.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py'
]
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

classes = ('circle', 'square', 'triangle', 'star')
num_classes = len(classes)
img_scale = (128, 128)
fpn_channels = 64
strides = [4, 8, 16]
# torchvision's CPU RoIAlign ran faster than mmcv's here, forward and
# backward; the output size stays the base config's (7 boxes, 14 masks).
roi_layer = dict(sampling_ratio=1, use_torchvision=True)

model = dict(
    data_preprocessor=dict(pad_size_divisor=16),
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
        in_channels=[32, 64, 128], out_channels=fpn_channels, num_outs=4),
    rpn_head=dict(
        in_channels=fpn_channels,
        feat_channels=fpn_channels,
        anchor_generator=dict(
            scales=[4], ratios=[0.5, 1.0, 2.0], strides=strides + [32])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=roi_layer,
            out_channels=fpn_channels,
            featmap_strides=strides),
        bbox_head=dict(
            in_channels=fpn_channels,
            fc_out_channels=256,
            num_classes=num_classes,
            reg_decoded_bbox=True,
            loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=10.0)),
        mask_roi_extractor=dict(
            roi_layer=roi_layer,
            out_channels=fpn_channels,
            featmap_strides=strides),
        mask_head=dict(
            num_convs=2,
            in_channels=fpn_channels,
            conv_out_channels=32,
            upsample_cfg=dict(type='bilinear', scale_factor=2),
            num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=32, pos_fraction=0.5))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(max_per_img=20)))

data_root = 'data/demo_shapes/'
metainfo = dict(classes=classes)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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

max_epochs = 16
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min_ratio=0.05,
        begin=0,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
auto_scale_lr = dict(base_batch_size=8)

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=4, max_keep_ckpts=1))
log_processor = dict(window_size=10)
randomness = dict(seed=0)
