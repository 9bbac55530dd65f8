"""Topological feature maps (Mapper graphs) of CLT and SAE features."""
