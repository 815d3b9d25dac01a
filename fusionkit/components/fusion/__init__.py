"""Fusion blocks: the FM of eq 2, mapping (f_I, f_M) to the joint representation f_IM."""
