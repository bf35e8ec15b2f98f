# DeiT-base with MRLA-base (Fang et al., ICLR 2023), ImageNet-1k at 224x224:
# groups of 4 encoder layers, d = 16. Recipe of
# deit-base-mrlal_16xb64_in1k.py: 300 epochs, batch 1024, AdamW, drop path
# 0.1 (mmpretrain's linear rule; the authors' code fixes 0.1 in every
# layer), EMA, 5 warm-up epochs.
_base_ = './deit-base-mrlal_16xb64_in1k.py'

model = dict(backbone=dict(mrla_cfg=dict(type='MRLABase'), mrla_group_size=4))
