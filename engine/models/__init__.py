"""Weights in, feature graphs out: VGG layer tables, weight readers, export, finding exported models."""
