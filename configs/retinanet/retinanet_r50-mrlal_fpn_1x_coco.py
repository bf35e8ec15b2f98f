# RetinaNet, ResNet-50 with MRLA-light, FPN, COCO 2017 detection, mmdet's 1x
# schedule (12 epochs, lr 0.01 at 16 images per batch: 2 per GPU x 8 GPUs).
# Backbone as in the authors' detection code: MRLA-light only, frozen stem
# and layer1 (MRLA parameters included), BN statistics frozen, no drop path.
# Pretrained weights: the authors' ImageNet MRLA-light ResNet-50
# (r50_mrlal_77.75.pth.tar in their configs; not published), converted with
#   python tools/model_converters/mrla_to_mmdet.py \
#       r50_mrlal_77.75.pth.tar checkpoints/resnet50_mrlal_in1k_mmdet.pth
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

pretrained = 'checkpoints/resnet50_mrlal_in1k_mmdet.pth'
model = dict(
    backbone=dict(
        type='MRLAResNet',
        mrla_cfg=dict(type='MRLALight'),
        mrla_drop_path=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
