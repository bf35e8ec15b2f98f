# Mask R-CNN, ResNet-101 with MRLA-light, FPN, COCO 2017, 1x schedule (16
# images per batch: 2 per GPU x 8 GPUs). Same backbone settings as the R-50
# config (frozen stem and layer1, BN statistics frozen, no drop path).
# Pretrained weights: an ImageNet MRLA-light ResNet-101 at `pretrained`
# (relative to where you run), loaded through init_cfg with prefix
# 'backbone.' (a file of bare backbone keys loads too): every backbone
# weight, MRLA included, must come from it, or the run stops. Make it with
#   python tools/train.py configs/mrla_cls/resnet101-mrlal_8xb32_in1k.py
#   # then copy work_dirs/resnet101-mrlal_8xb32_in1k/epoch_100.pth to
#   # checkpoints/resnet101_mrlal_in1k_mmdet.pth
# or convert the authors' ImageNet checkpoint (not published):
#   python tools/model_converters/mrla_official_to_openmmlab.py \
#       r101_mrlal_78.66.pth.tar checkpoints/resnet101_mrlal_in1k_mmdet.pth
# Without that file the config stops while building the model, before any
# dataset is read, and names these commands. To start from torchvision's
# ImageNet ResNet-101 instead (each MRLA branch starts as the identity, so
# the detector begins as the plain ResNet; not the paper's recipe):
#   --cfg-options model.backbone.init_cfg.checkpoint=torchvision://resnet101
_base_ = './mask-rcnn_r50-mrlal_fpn_1x_coco.py'

pretrained = 'checkpoints/resnet101_mrlal_in1k_mmdet.pth'
model = dict(
    backbone=dict(
        depth=101, init_cfg=dict(checkpoint=pretrained)))
