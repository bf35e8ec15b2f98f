# Mask R-CNN, ResNet-50 with MRLA-base (softmax attention over all earlier
# blocks of each stage), FPN, COCO 2017, 1x schedule (16 images per batch:
# 2 per GPU x 8 GPUs). The authors' detection code has no base version: this
# config follows their MRLA-base ImageNet model (deep 3-conv stem, d=16) and
# their light detection settings (frozen stem and layer1, BN statistics
# frozen, no drop path).
# Pretrained weights: only an ImageNet MRLA-base ResNet-50 with this deep
# stem fits, at `pretrained` (relative to where you run), loaded through
# init_cfg with prefix 'backbone.' (a file of bare backbone keys loads too):
# every backbone weight, MRLA included, must come from it, or the run stops.
# Make it with
#   python tools/train.py configs/mrla_cls/resnet50-mrlab_8xb32_in1k.py
#   # then copy work_dirs/resnet50-mrlab_8xb32_in1k/epoch_100.pth to
#   # checkpoints/resnet50_mrlab_in1k_mmdet.pth
# or convert the authors' MRLA-base ImageNet checkpoint (not published):
#   python tools/model_converters/mrla_official_to_openmmlab.py \
#       model_best.pth.tar checkpoints/resnet50_mrlab_in1k_mmdet.pth
# Without that file the config stops while building the model, before any
# dataset is read, and names these commands. torchvision's ResNet-50 does
# not fit (its stem is one 7x7 conv). The one alternative, a different model
# from the paper's base one (plain stem, each MRLA branch starting as the
# identity):
#   --cfg-options model.backbone.deep_stem=False \
#       model.backbone.init_cfg.checkpoint=torchvision://resnet50
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)

pretrained = 'checkpoints/resnet50_mrlab_in1k_mmdet.pth'
model = dict(
    backbone=dict(
        type='MRLAResNet',
        deep_stem=True,
        mrla_cfg=dict(type='MRLABase'),
        mrla_drop_path=0.,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained,
            prefix='backbone.')))
