"""Pixel transformations after the migration: rotate or flip listed instances and send them on.

The legacy PACS recorded a display transformation ("rotate 90 degrees
clockwise") against some images, which the new PACS would not apply. Such
instances come from a CSV list (:mod:`migrator.transform.input`) or from a
column of the reconciliation query, which holds them back during the
migration (:mod:`migrator.transform.hold`). ``migrator transform run``
retrieves each one from its indexed file or by C-MOVE from the legacy PACS
(:mod:`migrator.transform.retrieve`), transforms every frame
(:mod:`migrator.transform.pixels`) and the attributes that describe the
pixel grid (:mod:`migrator.transform.geometry`), and sends it to the
destination with one recorded outcome (:mod:`migrator.transform.run`).
"""
