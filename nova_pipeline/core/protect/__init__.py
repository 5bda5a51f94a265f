"""The ``protect`` group: ``golden_copy`` and ``backups``, and what keeps a run from destroying them.

Owns golden versions (:mod:`.golden`: export, promotion, verification, the runtime copy and reset), backups
(:mod:`.backup`: archives, verification levels, restore), the mass-deletion guard and the audit log.
Imports the ``core`` root and the groups before it.
"""

__all__ = ["audit", "backup", "golden", "guard"]
