"""Errors a caller can act on; each message names the bad value."""


class TTSInputError(ValueError):
    """The request itself is wrong (empty or oversized text, unknown speaker or emotion)."""


class QueueFullError(RuntimeError):
    """The queue is at its bound: the caller should try again shortly."""


class CallerLimitError(QueueFullError):
    """One caller (a page session, a user, an API client) already has its share of the queue waiting."""


class SynthesisError(RuntimeError):
    """The engine failed on this item (for example, out of GPU memory even alone)."""


class EngineUnavailableError(RuntimeError):
    """An engine cannot be built on this machine; the message says how to fix it."""
