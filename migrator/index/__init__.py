"""Indexing storage root folders: listing, header parsing and the index rows.

The local walk of ``migrator plan`` and the Celery workers of
``migrator plan --distributed`` index a folder with the same functions.
"""

#: The Celery task name under which workers index one folder of a distributed plan.
INDEX_FOLDER_TASK = "migrator.index_folder"

__all__ = ["INDEX_FOLDER_TASK"]
