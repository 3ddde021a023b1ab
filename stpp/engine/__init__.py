"""Training, evaluation, checkpoints, devices and progress events: the parts every phase shares."""
