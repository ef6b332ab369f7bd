"""Exceptions raised by the engine, each with a message meant for the person running streamvsr."""


class EngineError(Exception):
    """Base class of everything the engine raises on purpose."""


class CheckpointError(EngineError):
    """A model or one of its files could not be found, read or used."""


class DeviceError(EngineError):
    """The requested device, precision or attention backend is not available."""
