"""Exception types. Every message says what went wrong, where, and how to fix it."""


class AutoDeployError(Exception):
    """Base class of every error autodeploy raises on purpose."""


class ConfigError(AutoDeployError, ValueError):
    """A configuration value, file or key is wrong."""


class RegistryError(AutoDeployError, KeyError):
    """A name was looked up in a registry that does not hold it (or registered twice)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ExportError(AutoDeployError):
    """torch.export could not capture the model."""


class TransformError(AutoDeployError):
    """A transform failed while rewriting the graph."""


class BuildError(AutoDeployError):
    """The build finished with problems that strict mode does not accept."""


class CapacityError(AutoDeployError):
    """A request can never fit into the configured limits or cache."""


class QueueFullError(CapacityError):
    """The waiting queue is full (``max_waiting_requests``); retry later."""


class EngineDeadError(AutoDeployError):
    """The engine hit a fatal error and accepts no more requests; restart the server."""
