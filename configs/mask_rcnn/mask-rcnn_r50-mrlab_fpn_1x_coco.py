# Mask R-CNN, ResNet-50 with MRLA-base (softmax attention over all earlier
# blocks of each stage), FPN, COCO 2017, 1x schedule (16 images per batch:
# 2 per GPU x 8 GPUs). The authors' detection code has no base version: this
# config follows their MRLA-base ImageNet model (deep 3-conv stem, d=16) and
# their light detection settings (frozen stem and layer1, BN statistics
# frozen, no drop path).
# Pretrained weights: the authors' ImageNet MRLA-base ResNet-50 checkpoint
# (resnet50_mrlab; not published), converted with
#   python tools/model_converters/mrla_to_mmdet.py \
#       model_best.pth.tar checkpoints/resnet50_mrlab_in1k_mmdet.pth
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

pretrained = 'checkpoints/resnet50_mrlab_in1k_mmdet.pth'
model = dict(
    backbone=dict(
        type='MRLAResNet',
        deep_stem=True,
        mrla_cfg=dict(type='MRLABase'),
        mrla_drop_path=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
