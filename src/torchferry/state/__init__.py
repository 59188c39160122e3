"""Safe save/restore of training state: tensors, state_dicts, checkpoints, partial loads."""
