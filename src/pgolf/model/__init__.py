"""The GPT model assembled from :class:`pgolf.config.ModelConfig`."""
