"""The torch runtime: runs every model kind on CPU or CUDA (the reference backend)."""
