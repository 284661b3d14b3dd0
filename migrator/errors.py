"""Exceptions raised by the migrator.

The tree::

    MigratorError
     ├── ConfigError          the configuration file is missing or invalid
     ├── StateError           the state database cannot be used
     ├── LegacyDatabaseError  the reconciliation query failed
     ├── StorageRootError     a storage root is missing, unreadable or empty
     └── DestinationError     a destination could not be reached or rejected
                              the association

Per-instance problems (an unreadable file, a failed C-STORE) are not raised:
they end as a recorded outcome so the batch goes on.
"""


class MigratorError(Exception):
    """Base class of every error the migrator raises on purpose."""


class ConfigError(MigratorError):
    """The configuration file is missing or invalid."""


class StateError(MigratorError):
    """The state database cannot be opened, migrated or written."""


class LegacyDatabaseError(MigratorError):
    """The legacy database or the reconciliation query failed."""


class StorageRootError(MigratorError):
    """A storage root with planned batches is missing, cannot be read, or is empty."""


class DestinationError(MigratorError):
    """A DICOM destination could not be reached or rejected the association.

    ``transient`` is False when trying again cannot help, for example when
    the destination accepts none of the proposed presentation contexts.
    """

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
