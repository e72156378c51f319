"""What reading the spool can raise (re-exported by ``store.spool``)."""

from __future__ import annotations


class SpoolError(RuntimeError):
    """The spool's contents contradict themselves (a referenced chunk is missing)."""


class BodyPruned(SpoolError):
    """Retention dropped this stored call's bodies (store/retention.py); its totals are kept."""

    def __init__(self, exchange_id: str, pruned_at: float) -> None:
        super().__init__(f"call {exchange_id}: its bodies were pruned by retention")
        self.exchange_id = exchange_id
        self.pruned_at = pruned_at
