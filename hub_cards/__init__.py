"""Markdown templates of the cards `capt` writes for the Hub: filled by `dataset_scripts.cards.fill_card`; and, in
`serving/`, the Gradio Space and Inference Endpoints files `trainers/write_space.py` copies beside a checkpoint.

This folder is a package only so that the templates install with `capt` as package data.
"""
