"""Segmentation: dense light labels (scenes and dataset readers, dense views, segmenters, mIoU)."""
