"""Several relays as one tuner: the slot ledger, its Redis implementation, routing configs, sync lock."""
