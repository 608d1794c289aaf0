"""The embedded default: `capt-tiny-fashion` (a small CLIP) and `fashion-subset` (Parquet), the trainer's defaults.

This folder is a package only so that the two folders install with `capt` as package data; locate them with
`dataset_scripts.paths` (`EMBEDDED_MODEL`, `EMBEDDED_DATA`). `dataset_scripts/build_embedded_default.py` rebuilds them.
"""
