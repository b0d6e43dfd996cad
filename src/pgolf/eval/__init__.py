"""Evaluation: the one implementation of val_loss and val_bpb."""
