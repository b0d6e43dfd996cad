"""Post-training quantization schemes."""
