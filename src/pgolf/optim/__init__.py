"""Optimizers (Muon for block matrices, Adam for the rest), parameter groups and LR schedules."""
