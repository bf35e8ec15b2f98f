# Faster R-CNN, ResNet-50 with MRLA-light, FPN, COCO 2017 detection, mmdet's
# 1x schedule (12 epochs, 16 images per batch: 2 per GPU x 8 GPUs).
# Backbone as in the authors' detection code: MRLA-light only, frozen stem
# and layer1 (MRLA parameters included), BN statistics frozen, no drop path.
# Pretrained weights: an ImageNet MRLA-light ResNet-50 at `pretrained`
# (relative to where you run), loaded through init_cfg with prefix
# 'backbone.' (a file of bare backbone keys loads too): every backbone
# weight, MRLA included, must come from it, or the run stops. Make it with
#   python tools/train.py configs/mrla_cls/resnet50-mrlal_8xb32_in1k.py
#   # then copy work_dirs/resnet50-mrlal_8xb32_in1k/epoch_100.pth to
#   # checkpoints/resnet50_mrlal_in1k_mmdet.pth
# or convert the authors' ImageNet checkpoint (not published):
#   python tools/model_converters/mrla_official_to_openmmlab.py \
#       r50_mrlal_77.75.pth.tar checkpoints/resnet50_mrlal_in1k_mmdet.pth
# Without that file the config stops while building the model, before any
# dataset is read, and names these commands. To start from torchvision's
# ImageNet ResNet-50 instead (each MRLA branch starts as the identity, so
# the detector begins as the plain ResNet; not the paper's recipe):
#   --cfg-options model.backbone.init_cfg.checkpoint=torchvision://resnet50
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

pretrained = 'checkpoints/resnet50_mrlal_in1k_mmdet.pth'
model = dict(
    backbone=dict(
        type='MRLAResNet',
        mrla_cfg=dict(type='MRLALight'),
        mrla_drop_path=0.,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained,
            prefix='backbone.')))
