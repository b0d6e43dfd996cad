"""The training loop: wallclock cap, warm-down, compile warm-up and run directories."""
