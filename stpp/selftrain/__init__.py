"""Self-training: pseudo-labelling, the stability ranking and the ST / ST++ phase sequence."""
