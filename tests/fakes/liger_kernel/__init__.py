"""A stand-in for liger-kernel on machines without a GPU: the same entry points rigtune calls, with the same
mathematics in plain PyTorch, and a counter on every module it patched. Tests put this folder on sys.path."""
