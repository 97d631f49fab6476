"""Domain errors raised by services; ``tokens_service.exceptions.exception_handler`` maps them to HTTP."""


class ServiceError(Exception):
    """Base of the errors a service raises for a caller's mistake (never for a server fault)."""


class ObjectNotFound(ServiceError):
    """The object does not exist, or is not usable (an expired token). Maps to 404."""


class FieldConflict(ServiceError):
    """A value clashes with existing data. Maps to 400 on ``field``; the message never quotes the value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
