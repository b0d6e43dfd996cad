"""The single-file bundler: the package, for one configuration, as one self-extracting ``train_gpt.py``."""
