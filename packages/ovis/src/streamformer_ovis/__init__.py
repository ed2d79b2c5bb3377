"""Online video instance segmentation on StreamFormer (CTVIS on a ViT-Adapter, pure PyTorch)."""
