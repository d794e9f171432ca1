"""Triton kernels of pylosses, installed as pylosses.triton_kernels: one loss a file (the kernel
and its launcher), and common.py for what they share. pylosses/_ops.py registers them as the
ops triton_<name>, which backend="triton" runs."""
