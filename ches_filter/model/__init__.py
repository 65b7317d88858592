"""Loading models (hub, local folder, GGUF, bundled) and running them over token batches."""
