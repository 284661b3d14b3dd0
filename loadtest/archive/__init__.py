"""The synthetic legacy archive: layout, pixel templates, files, legacy database, manifest."""

from loadtest.archive.config import DEFAULT_ENDPOINTS, Endpoint, RunSettings
from loadtest.archive.generate import GeneratedArchive, generate_archive
from loadtest.archive.layout import ArchiveSpec
from loadtest.archive.manifest import Manifest, ManifestFile, read_manifest

__all__ = [
    "DEFAULT_ENDPOINTS",
    "ArchiveSpec",
    "Endpoint",
    "GeneratedArchive",
    "Manifest",
    "ManifestFile",
    "RunSettings",
    "generate_archive",
    "read_manifest",
]
