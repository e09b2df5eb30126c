class ActionRefused(Exception):
    """A user action that the current state does not allow; ``message`` says why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
