"""Accelerate training scripts for the OFTSR teacher and the one-step student."""
