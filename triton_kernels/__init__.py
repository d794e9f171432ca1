"""Triton kernels of pylosses, installed as pylosses.triton_kernels (one loss a file).

None have landed yet: backend="triton" raises a RuntimeError that says so.
"""
