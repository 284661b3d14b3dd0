"""pacs-migrator: move a legacy PACS archive into a new PACS over DICOM."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
