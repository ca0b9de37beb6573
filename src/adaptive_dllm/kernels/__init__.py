"""Triton kernels (imported on first use; nothing here imports the rest of the package)."""
