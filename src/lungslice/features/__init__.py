"""Slice features: backbones and their weights, network inputs, extraction and its cache."""
