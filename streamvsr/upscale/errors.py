class UpscaleError(Exception):
    """A problem with the user's input or output paths: reported as one line, exit code 2."""
