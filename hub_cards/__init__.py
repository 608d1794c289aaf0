"""Markdown templates of the cards `capt` writes for the Hub: filled by `dataset_scripts.cards.fill_card`.

This folder is a package only so that the templates install with `capt` as package data.
"""
