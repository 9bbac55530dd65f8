"""Qwen-Scope's applications as tools: training-free classifiers, dataset overlap, anomaly
features, targeted synthesis (on the shared session; in-process or on Ray)."""
