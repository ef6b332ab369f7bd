"""Settings files: ``default.yaml`` ships as package data (read by ``streamvsr.config``)."""
