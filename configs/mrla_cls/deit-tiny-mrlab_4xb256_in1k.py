# DeiT-tiny with MRLA-base (Fang et al., ICLR 2023), ImageNet-1k at 224x224:
# softmax attention over the earlier layers of groups of 4 encoder layers
# (restarting at layers 0, 4, 8), d = 16. Recipe of
# deit-tiny-mrlal_4xb256_in1k.py: 300 epochs, batch 1024, AdamW, drop path
# 0.1, 5 warm-up epochs.
_base_ = './deit-tiny-mrlal_4xb256_in1k.py'

model = dict(backbone=dict(mrla_cfg=dict(type='MRLABase'), mrla_group_size=4))
