# Mask R-CNN, ResNet-101 with MRLA-light, FPN, COCO 2017, 3x multi-scale
# schedule with polygon masks (36 epochs, 2 images per GPU x 8 GPUs).
# Pretrained weights: the authors' ImageNet MRLA-light ResNet-101
# (r101_mrlal_78.66.pth.tar in their configs; not published), converted with
#   python tools/model_converters/mrla_to_mmdet.py \
#       r101_mrlal_78.66.pth.tar checkpoints/resnet101_mrlal_in1k_mmdet.pth
_base_ = './mask-rcnn_r50-mrlal_fpn_ms-poly-3x_coco.py'

pretrained = 'checkpoints/resnet101_mrlal_in1k_mmdet.pth'
model = dict(
    backbone=dict(
        depth=101, init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
