# The detection demo started from the classification demo's checkpoint
# instead of from scratch: the path from an ImageNet config to a COCO
# config (docs/detection.md, "From ImageNet to COCO") at demo scale. The
# backbone is the classifier's (configs/mrla_cls/resnet18-mrlal_demo_folder.py:
# ResNet-18 with 16-32-64-128 channels, MRLA-light with d=16 after every
# basic block) and loads its weights as the COCO configs do, through
# init_cfg with prefix 'backbone.'; the classifier's head is left out.
#   python tools/misc/make_cls_demo_dataset.py data/cls_demo
#   python tools/train.py configs/mrla_cls/resnet18-mrlal_demo_folder.py
#   python tools/misc/make_demo_dataset.py data/demo_shapes
#   python tools/train.py \
#       configs/demo/mask-rcnn_r18-mrlal-clsdemo-pre_fpn_demo.py
# The second command writes `pretrained`; without that file this config
# stops while building the model, before any dataset is read.
_base_ = './mask-rcnn_r18-mrlal_fpn_demo.py'

pretrained = 'work_dirs/resnet18-mrlal_demo_folder/iter_100.pth'
strides = [4, 8, 16, 32]
model = dict(
    backbone=dict(
        stem_channels=16,
        base_channels=16,
        num_stages=4,
        strides=(1, 2, 2, 2),
        dilations=(1, 1, 1, 1),
        out_indices=(0, 1, 2, 3),
        mrla_cfg=dict(type='MRLALight', dim_per_head=16),
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint=pretrained,
            prefix='backbone.')),
    neck=dict(in_channels=[16, 32, 64, 128], num_outs=5),
    rpn_head=dict(anchor_generator=dict(strides=strides + [64])),
    roi_head=dict(
        bbox_roi_extractor=dict(featmap_strides=strides),
        mask_roi_extractor=dict(featmap_strides=strides)))
