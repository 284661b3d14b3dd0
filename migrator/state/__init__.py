"""The migrator's state database."""
