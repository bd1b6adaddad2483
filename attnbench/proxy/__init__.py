"""Accuracy-proxy machinery: the small-model trainer, the data generators and the ProxySuite base."""
