"""Collisions in the legacy archive: files that cannot all reach the destination as they are.

``migrator plan`` finds them after indexing (:mod:`.detect`), ``migrator
start`` applies the configured policy to each file in one (:mod:`.policy`),
and ``migrator collisions`` lists them (:mod:`.report`). The index compares
patients through keyed hashes only (:mod:`.patient`).
"""
