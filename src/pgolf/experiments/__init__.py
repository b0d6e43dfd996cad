"""Experiments: reading finished run directories, the runs index, reports and sweeps."""
