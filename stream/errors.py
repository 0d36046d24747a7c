"""The stream package's exceptions: one root, Kafka errors keep their code."""

from __future__ import annotations


class StreamError(Exception):
    """Root of every error raised by the stream package."""


class ConfigError(StreamError):
    """A setting is missing or invalid; the message names the environment variable."""


class BrokerError(StreamError):
    """The embedded broker could not be started or reached."""


class KafkaClientError(StreamError):
    """A Kafka operation failed; ``code`` is librdkafka's error code when there is one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message if code is None else f"{message} (code {code})")
        self.code = code


class BrokerUnreachable(KafkaClientError):
    """No broker answered within RL_KAFKA_CONNECT_TIMEOUT_S."""


class InputFileError(StreamError):
    """A file named on the command line is missing or unreadable."""


class TooManyProcessingErrors(StreamError):
    """More than RL_MAX_PROCESSING_ERRORS dead-lettered processing errors in a minute."""


class DeliveryError(KafkaClientError):
    """A produced record can be neither delivered nor dead-lettered (e.g. a fatal
    producer error or an authorization failure on the dead-letter topic)."""


class NewerFormat(StreamError):
    """State written by a newer bandit-stream than this one reads (a rollback past a
    format change): the service stops rather than restore around it (docs/upgrading.md)."""

    @classmethod
    def check(cls, found: object, reads: int, what: str, remedy: str = "") -> None:
        """Raise when ``what`` (e.g. "x is in state format") is at version ``found``, past
        the ``reads`` this code reads."""
        if isinstance(found, int) and found > reads:
            raise cls(
                f"{what} {found}, newer than this version reads (up to {reads}): run the "
                f"version that wrote it or a later one{remedy} (docs/upgrading.md)"
            )


class CheckpointError(StreamError):
    """A checkpoint cannot be written or read."""


class CorruptCheckpoint(CheckpointError):
    """A stored checkpoint fails validation (digest, dtype, shape or JSON)."""


class StateTopicError(CheckpointError):
    """The state topic cannot be read (missing, unreachable, too slow)."""
