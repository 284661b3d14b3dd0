"""Reconciliation of each header with the legacy PACS database."""
