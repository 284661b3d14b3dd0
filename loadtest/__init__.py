"""Load-test tools for pacs-migrator: a synthetic legacy archive generator.

``python -m loadtest generate --out DIR`` writes storage roots of JPEG 2000 CT
images striped the way a legacy PACS stores them, a legacy database that
disagrees with some headers, a manifest of the expected outcome of every file,
and a migrator.toml. See loadtest/README.md.
"""
