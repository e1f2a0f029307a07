"""The fleet's start-up error, importable without Ray or the engine."""


class FleetUnavailableError(RuntimeError):
    """Replicas cannot be started here (Ray is missing, or the cluster cannot be joined)."""
