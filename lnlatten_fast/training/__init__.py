"""Training and evaluation: the paper's protocol (SPEC §5) around LNLAttenNet."""
