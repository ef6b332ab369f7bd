"""streamvsr's application layer: settings and the command line (the WebRTC server builds on it)."""
